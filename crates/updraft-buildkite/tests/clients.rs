//! The agent API and REST v2 clients against the in-process emulator: a job's whole life
//! through the agent API (including meta-data, pipeline upload and annotations), and the
//! REST calls with `Link` pagination.

use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use updraft_buildkite::agent_api::{
    register, AcquireError, AgentRetries, AgentSession, Annotation, FinishRequest, LogChunk,
    MetaDataScope, PingAction, RegisterRequest,
};
use updraft_buildkite::rest::{BuildFilter, CreateBuild, RestClient};
use updraft_buildkite::{ClientOptions, Secret};
use updraft_emulator::{EmulatorConfig, EmulatorHandle, JobState};

const PIPELINE: &str =
    "env:\n  BUILDKITE_SKIP_CHECKOUT: \"true\"\nsteps:\n  - command: \"echo hi\"\n    key: hi\n";

async fn emulator() -> EmulatorHandle {
    updraft_emulator::start(EmulatorConfig::default())
        .await
        .unwrap()
}

async fn session(emulator: &EmulatorHandle, ignore_in_dispatches: bool) -> AgentSession {
    let request = RegisterRequest {
        name: "client-test".into(),
        ignore_in_dispatches,
        meta_data: vec!["queue=default".into()],
        ..RegisterRequest::default()
    };
    let (registered, session) = register(
        &emulator.agent_endpoint(),
        &emulator.agent_token(),
        &request,
        ClientOptions::default(),
        AgentRetries::fast(),
    )
    .await
    .unwrap();
    assert!(registered.ping_interval > 0 && registered.heartbeat_interval > 0);
    assert!(registered.access_token.expose().starts_with("bkaa_"));
    session.connect().await.unwrap();
    session
}

fn gzip(data: &[u8]) -> bytes::Bytes {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap().into()
}

#[tokio::test]
async fn a_job_goes_through_ping_accept_start_chunks_and_finish() {
    let emulator = emulator().await;
    emulator.create_pipeline("life", PIPELINE).unwrap();
    let job_id = emulator.create_build("life").unwrap().job_ids[0];
    let session = session(&emulator, false).await;
    session.heartbeat().await.unwrap();

    let ping = session.ping().await.unwrap();
    assert_eq!(ping.action(), PingAction::RunJob(job_id.to_string()));
    let job = session.accept(&job_id.to_string()).await.unwrap();
    assert!(job.chunks_max_size_bytes > 0);
    assert_eq!(job.command().as_deref(), Some("echo hi"));
    assert!(job
        .token
        .as_ref()
        .is_some_and(|t| t.expose().starts_with("bkaj_")));

    let client = session.job_client(&job).unwrap();
    client.start().await.unwrap();
    assert_eq!(client.state().await.unwrap(), Some(JobState::Running));
    // Out of order, and one chunk sent twice: the stored log is still exact.
    for (sequence, offset, text) in [
        (2u64, 6u64, &b"world\n"[..]),
        (1, 0, b"hello "),
        (2, 6, b"world\n"),
    ] {
        let chunk = LogChunk {
            sequence,
            offset,
            size: text.len() as u64,
            gzipped: gzip(text),
        };
        client.upload_chunk(&chunk).await.unwrap();
    }
    client.set_meta_data("release", "v1").await.unwrap();
    let build_id = job.env["BUILDKITE_BUILD_ID"].clone();
    assert_eq!(
        client
            .get_meta_data(MetaDataScope::Build, &build_id, "release")
            .await
            .unwrap()
            .as_deref(),
        Some("v1")
    );
    assert_eq!(
        client
            .get_meta_data(MetaDataScope::Build, &build_id, "absent")
            .await
            .unwrap(),
        None
    );
    assert!(client
        .meta_data_exists(MetaDataScope::Build, &build_id, "release")
        .await
        .unwrap());
    assert_eq!(
        client
            .meta_data_keys(MetaDataScope::Build, &build_id)
            .await
            .unwrap(),
        vec!["release"]
    );
    assert!(client.set_meta_data(" ", "x").await.is_err());
    client
        .annotate(&Annotation {
            body: Some("**done**".into()),
            context: Some("deploy.notes".into()),
            style: Some("info".into()),
            ..Annotation::default()
        })
        .await
        .unwrap();
    client
        .remove_annotation("deploy.notes", None)
        .await
        .unwrap();
    let pipeline = serde_json::json!({"steps": [{"command": "echo uploaded"}]});
    client
        .upload_pipeline("7f1c5c1e-6a43-4d8e-9b43-3a0f2b9a1c10", &pipeline, false)
        .await
        .unwrap();

    client
        .finish(&FinishRequest {
            exit_status: "0".into(),
            signal: None,
            signal_reason: None,
            finished_at: chrono::Utc::now().to_rfc3339(),
            chunks_failed_count: 0,
            ignore_agent_in_dispatches: None,
        })
        .await
        .unwrap();
    assert_eq!(emulator.job_state(job_id), Some(JobState::Passed));
    assert_eq!(emulator.job_log(job_id).unwrap(), b"hello world\n");
    session.disconnect().await.unwrap();
}

#[tokio::test]
async fn acquire_maps_422_to_rejected_and_finishing_twice_is_refused() {
    let emulator = emulator().await;
    emulator.create_pipeline("acq", PIPELINE).unwrap();
    let job_id = emulator.create_build("acq").unwrap().job_ids[0].to_string();
    let session = session(&emulator, true).await;
    let job = session.acquire(&job_id).await.unwrap();
    let again = session.acquire(&job_id).await.unwrap_err();
    assert!(matches!(again, AcquireError::Rejected { .. }), "{again:?}");
    let client = session.job_client(&job).unwrap();
    client.start().await.unwrap();
    let finish = FinishRequest {
        exit_status: "1".into(),
        signal: None,
        signal_reason: None,
        finished_at: chrono::Utc::now().to_rfc3339(),
        chunks_failed_count: 0,
        ignore_agent_in_dispatches: Some(true),
    };
    client.finish(&finish).await.unwrap();
    let error = client.finish(&finish).await.unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(422));
}

#[tokio::test]
async fn rest_lists_builds_across_pages_and_drives_builds_and_jobs() {
    let emulator = emulator().await;
    emulator.create_pipeline("rest", PIPELINE).unwrap();
    let rest = RestClient::new(
        &emulator.rest_endpoint(),
        &emulator.api_token(),
        &emulator.org(),
        ClientOptions::default(),
    )
    .unwrap();
    for _ in 0..5 {
        rest.create_build(
            "rest",
            &CreateBuild {
                commit: "HEAD".into(),
                branch: "main".into(),
                ..CreateBuild::default()
            },
        )
        .await
        .unwrap();
    }
    let filter = BuildFilter {
        pipeline: Some("rest".into()),
        per_page: Some(2),
        ..BuildFilter::default()
    };
    let builds = rest.list_builds(&filter).await.unwrap();
    assert_eq!(
        builds.iter().map(|b| b.number).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    let limited = rest
        .list_builds(&BuildFilter {
            limit: Some(3),
            ..filter.clone()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 3);
    let running = BuildFilter {
        states: vec!["canceled".into()],
        ..filter.clone()
    };
    assert!(rest.list_builds(&running).await.unwrap().is_empty());

    let cancelled = rest.cancel_build("rest", 5).await.unwrap();
    assert!(
        matches!(cancelled.state.as_str(), "canceled" | "canceling"),
        "{}",
        cancelled.state
    );
    let rebuilt = rest.rebuild("rest", 5).await.unwrap();
    assert_eq!(rebuilt.number, 6);

    let build = rest.get_build("rest", 1).await.unwrap();
    let job = &build.jobs[0];
    assert_eq!(job.state(), Some(JobState::Scheduled));
    assert_eq!(rest.get_job(&job.id).await.unwrap().id, job.id);
    let env = rest.job_env("rest", 1, &job.id).await.unwrap();
    assert_eq!(env["BUILDKITE_COMMAND"], "echo hi");
    assert!(rest.job_log("rest", 1, &job.id).await.unwrap().is_empty());
    let error = rest.retry_job("rest", 1, &job.id).await.unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(422), "{error}");
}

#[tokio::test]
async fn rest_lists_gets_and_stops_agents() {
    let emulator = emulator().await;
    let session = session(&emulator, false).await;
    let rest = RestClient::new(
        &emulator.url(),
        &emulator.api_token(),
        &emulator.org(),
        ClientOptions::default(),
    )
    .unwrap();
    let agents = rest.list_agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].connection_state, "connected");
    let agent = rest.get_agent(&agents[0].id).await.unwrap();
    assert_eq!(agent.name, "client-test");
    rest.stop_agent(&agent.id, false).await.unwrap();
    assert_eq!(
        session.ping().await.unwrap().action(),
        PingAction::Disconnect
    );
}

#[tokio::test]
async fn a_wrong_rest_token_is_a_401_that_does_not_show_the_token() {
    let emulator = emulator().await;
    let rest = RestClient::new(
        &emulator.url(),
        &Secret::new("bkua_not_valid_at_all"),
        &emulator.org(),
        ClientOptions::default(),
    )
    .unwrap();
    let error = rest.list_agents().await.unwrap_err();
    assert_eq!(error.status().map(|s| s.as_u16()), Some(401));
    assert!(!error.to_string().contains("not_valid_at_all"), "{error}");
}

/// The emulator does not serve the cursor-paginated job list, so a two-page answer is
/// served here the way the reference describes it (`items` + `links.next`).
#[tokio::test]
async fn build_jobs_follow_the_cursor_links() {
    use axum::extract::Query;
    use axum::routing::get;
    use std::collections::HashMap;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let next = format!("{base}/v2/organizations/acme/pipelines/p/builds/1/jobs?after=cursor-1");
    let app = axum::Router::new().route(
        "/v2/organizations/acme/pipelines/p/builds/1/jobs",
        get(move |Query(query): Query<HashMap<String, String>>| {
            let next = next.clone();
            async move {
                let body = match query.get("after").map(String::as_str) {
                    None => serde_json::json!({"items": [{"id": "a", "state": "passed"}], "links": {"self": "x", "next": next}}),
                    Some(_) => serde_json::json!({"items": [{"id": "b", "state": "failed"}], "links": {"self": "y"}}),
                };
                axum::Json(body)
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let rest = RestClient::new(
        &base,
        &Secret::new("bkua_t"),
        "acme",
        ClientOptions::default(),
    )
    .unwrap();
    let jobs = rest
        .list_build_jobs("p", 1, &["passed", "failed"])
        .await
        .unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

/// Serve `GET /v3/ping` with `body`; returns the `/v3` base URL.
async fn ping_server(body: serde_json::Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v3", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v3/ping",
        axum::routing::get(move || async move { axum::Json(body) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn a_ping_naming_a_working_endpoint_moves_the_session_there() {
    let new_home = ping_server(serde_json::json!({})).await;
    let old_home = ping_server(serde_json::json!({ "endpoint": new_home })).await;
    let client = updraft_buildkite::ApiClient::new(
        &old_home,
        &Secret::new("bkaa_s"),
        updraft_buildkite::AuthScheme::Token,
        ClientOptions::default(),
    )
    .unwrap();
    let session = AgentSession::new(client, AgentRetries::fast());
    session.ping().await.unwrap();
    assert_eq!(session.client().base(), new_home);

    let dead_end = ping_server(serde_json::json!({ "endpoint": "http://127.0.0.1:1/v3" })).await;
    let client = updraft_buildkite::ApiClient::new(
        &dead_end,
        &Secret::new("bkaa_s"),
        updraft_buildkite::AuthScheme::Token,
        ClientOptions::default(),
    )
    .unwrap();
    let session = AgentSession::new(client, AgentRetries::fast());
    session.ping().await.unwrap();
    assert_eq!(
        session.client().base(),
        dead_end,
        "an endpoint that does not answer is not followed"
    );
}
