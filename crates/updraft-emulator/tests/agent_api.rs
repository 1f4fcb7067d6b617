//! Conformance of the agent API v3 (reference §1.6, checklist §8): register, connect, ping,
//! heartbeat, accept, acquire, start, chunks, job state, finish, tokens and wrong states.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

const ONE_STEP: &str = "steps:\n  - command: echo hello\n    key: hello\n";

#[tokio::test]
async fn register_returns_session_token_and_positive_intervals() {
    let h = start().await;
    let body = h
        .with_agent_token(Method::POST, "/register")
        .json(&json!({"name": "a-%spawn", "meta_data": ["queue=default", "docker=true"]}))
        .expect_json(StatusCode::OK)
        .await;
    assert!(body["access_token"].as_str().unwrap().starts_with("bkaa_"));
    assert!(body["ping_interval"].as_u64().unwrap() > 0);
    assert!(body["heartbeat_interval"].as_u64().unwrap() > 0);
    assert!(body["job_status_interval"].as_u64().unwrap() > 0);
    assert_eq!(body["name"], "a-1");
    assert_eq!(body["meta_data"], json!(["queue=default", "docker=true"]));
    assert!(body["id"].as_str().is_some());
}

#[tokio::test]
async fn register_rejects_bad_tokens_and_bad_input() {
    let h = start().await;
    h.v3(Method::POST, "/register", "bkct_wrong")
        .json(&json!({}))
        .expect_error(StatusCode::UNAUTHORIZED)
        .await;
    h.http
        .post(format!("{}/register", h.emulator.agent_endpoint()))
        .json(&json!({}))
        .expect_error(StatusCode::UNAUTHORIZED)
        .await;
    h.with_agent_token(Method::POST, "/register")
        .body("{not json")
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    let message = h
        .with_agent_token(Method::POST, "/register")
        .json(&json!({"meta_data": ["queue"]}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert!(message.contains("meta_data[0]"), "{message}");
}

#[tokio::test]
async fn session_token_is_needed_for_agent_calls() {
    let h = start().await;
    for (method, path) in [
        (Method::GET, "/ping"),
        (Method::POST, "/heartbeat"),
        (Method::POST, "/connect"),
        (Method::POST, "/disconnect"),
    ] {
        h.v3(method.clone(), path, "bkaa_nope")
            .expect_error(StatusCode::UNAUTHORIZED)
            .await;
        // The agent token is not a session token.
        h.v3(method, path, &h.agent_token())
            .expect_error(StatusCode::UNAUTHORIZED)
            .await;
    }
}

#[tokio::test]
async fn heartbeat_echoes_sent_at_and_adds_received_at() {
    let h = start().await;
    let agent = h.register(&[]).await;
    let body = h
        .v3(Method::POST, "/heartbeat", &agent.session)
        .json(&json!({"sent_at": "2026-01-01T00:00:00.000000001Z"}))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(body["sent_at"], "2026-01-01T00:00:00.000000001Z");
    assert!(body["received_at"].as_str().is_some());
}

#[tokio::test]
async fn ping_accept_start_chunks_finish_happy_path() {
    let h = start().await;
    let build = h.first_build("p", ONE_STEP).await;
    let job_id = script_jobs(&build)[0].clone();
    let agent = h.register(&["queue=default"]).await;
    h.assert_dispatched(&agent, &job_id).await;
    h.assert_job_state(&job_id, "assigned").await;
    let job = h.accept(&agent, &job_id).expect_json(StatusCode::OK).await;
    assert!(job["token"].as_str().unwrap().starts_with("bkaj_"));
    assert!(job["chunks_max_size_bytes"].as_u64().unwrap() > 0);
    for var in [
        "BUILDKITE_JOB_ID",
        "BUILDKITE_REPO",
        "BUILDKITE_COMMIT",
        "BUILDKITE_BRANCH",
        "BUILDKITE_AGENT_NAME",
        "BUILDKITE_ORGANIZATION_SLUG",
        "BUILDKITE_PIPELINE_SLUG",
        "BUILDKITE_PIPELINE_PROVIDER",
        "BUILDKITE_COMMAND",
        "BUILDKITE_BUILD_URL",
        "BUILDKITE_AGENT_META_DATA_QUEUE",
    ] {
        assert!(
            job["env"][var].as_str().is_some(),
            "env lacks {var}: {}",
            job["env"]
        );
    }
    assert_eq!(job["env"]["BUILDKITE_COMMAND"], "echo hello");
    assert_eq!(job["step"]["command"], "echo hello");
    assert!(job["step"].get("signature").is_none());
    h.start_job(&job).await;
    assert_eq!(
        h.upload_chunk(&job, 2, 6, b"world\n").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        h.upload_chunk(&job, 1, 0, b"hello ").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        h.upload_chunk(&job, 1, 0, b"hello ").await.status(),
        StatusCode::CREATED
    );
    let state = h
        .job_call(Method::GET, &job, "")
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(state["state"], "running");
    assert_eq!(h.finish(&job, "0").await.status(), StatusCode::OK);
    h.assert_job_state(&job_id, "passed").await;
    let log = h.emulator.job_log(job_id.parse().unwrap()).unwrap();
    assert_eq!(log, b"hello world\n");
    let timeline = h.timeline(&job_id).await;
    let states: Vec<&str> = timeline["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        vec![
            "pending",
            "scheduled",
            "assigned",
            "accepted",
            "running",
            "passed"
        ]
    );
    assert_eq!(timeline["attempts"][0]["action"], "accept");
    let build = h.get_build("p", 1).await;
    assert_eq!(build["state"], "passed");
}

#[tokio::test]
async fn ping_only_hands_out_matching_jobs() {
    let h = start().await;
    h.create_pipeline(
        "p",
        "steps:\n  - command: x\n    agents: {queue: linux, docker: 'true'}\n",
    )
    .await;
    h.create_build("p").await;
    let wrong = h.register(&["queue=linux"]).await;
    let ping = h.ping(&wrong).await;
    assert!(ping.get("job").is_none(), "{ping}");
    let acquire_mode = h
        .register_with(&h.agent_token(), &["queue=linux", "docker=true"], true)
        .await;
    let ping = h.ping(&acquire_mode).await;
    assert!(
        ping.get("job").is_none(),
        "agents in acquire mode are never dispatched: {ping}"
    );
    let right = h.register(&["queue=linux", "docker=true"]).await;
    let ping = h.ping(&right).await;
    assert!(ping["job"]["id"].as_str().is_some(), "{ping}");
}

#[tokio::test]
async fn accept_in_wrong_state_is_422_and_unknown_job_404() {
    let h = start().await;
    let build = h.first_build("p", ONE_STEP).await;
    let job_id = script_jobs(&build)[0].clone();
    let agent = h.register(&[]).await;
    h.accept(&agent, &job_id)
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.v3(
        Method::PUT,
        "/jobs/00000000-0000-0000-0000-000000000000/accept",
        &agent.session,
    )
    .expect_error(StatusCode::NOT_FOUND)
    .await;
    let timeline = h.timeline(&job_id).await;
    assert_eq!(timeline["attempts"][0]["status"], 422);
    assert_eq!(timeline["accepts"], 1);
}

#[tokio::test]
async fn acquire_needs_lock_header_and_answers_422_once_taken() {
    let h = start().await;
    let job_id = h.start_one_job("p", ONE_STEP).await;
    let agent = h.register_with(&h.agent_token(), &[], true).await;
    h.v3(
        Method::PUT,
        &format!("/jobs/{job_id}/acquire"),
        &agent.session,
    )
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
    .await;
    let job = h.acquire_ok(&agent, &job_id).await;
    assert_eq!(job["id"], job_id.as_str());
    h.assert_job_state(&job_id, "accepted").await;
    let other = h.register_with(&h.agent_token(), &[], true).await;
    expect_error(
        h.acquire(&other, &job_id).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    let timeline = h.timeline(&job_id).await;
    assert_eq!(timeline["acquires"], 3);
    let outcomes: Vec<u64> = timeline["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(outcomes, vec![422, 200, 422]);
}

#[tokio::test]
async fn acquire_of_a_waiting_job_is_423_with_retry_after() {
    let h = start().await;
    let build = h
        .first_build(
            "p",
            "steps:\n  - command: first\n  - wait\n  - command: second\n",
        )
        .await;
    let second = script_jobs(&build)[1].clone();
    h.assert_job_state(&second, "waiting").await;
    let agent = h.register_with(&h.agent_token(), &[], true).await;
    let response = h.acquire(&agent, &second).await;
    assert_eq!(response.status(), StatusCode::LOCKED);
    assert!(response.headers().get("retry-after").is_some());
    expect_error(response, StatusCode::LOCKED).await;
    h.assert_job_state(&second, "waiting").await;
}

#[tokio::test]
async fn job_token_is_scoped_to_its_job() {
    let h = start().await;
    let build = h
        .first_build("p", "steps:\n  - command: a\n  - command: b\n")
        .await;
    let ids = script_jobs(&build);
    let agent = h.register(&[]).await;
    let job_a = h.acquire_ok(&agent, &ids[0]).await;
    let token_a = job_a["token"].as_str().unwrap();
    h.v3(Method::PUT, &format!("/jobs/{}/start", ids[1]), token_a)
        .json(&json!({}))
        .expect_error(StatusCode::UNAUTHORIZED)
        .await;
    h.v3(Method::GET, &format!("/jobs/{}", ids[0]), "bkaj_forged")
        .expect_error(StatusCode::UNAUTHORIZED)
        .await;
    h.assert_job_state(&ids[1], "scheduled").await;
}

#[tokio::test]
async fn start_and_finish_in_wrong_state_are_422() {
    let h = start().await;
    let job_id = h.start_one_job("p", ONE_STEP).await;
    let job = h.run_job(&job_id, "1").await;
    let response = h.finish(&job, "0").await;
    expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    h.job_call(Method::PUT, &job, "/start")
        .json(&json!({}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.assert_job_state(&job_id, "failed").await;
}

#[tokio::test]
async fn finish_takes_exit_status_as_string_and_rejects_garbage() {
    let h = start().await;
    let job_id = h.start_one_job("p", ONE_STEP).await;
    let job = h.running_job(&job_id).await;
    let message = h
        .job_call(Method::PUT, &job, "/finish")
        .json(&json!({"exit_status": "zero"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert!(message.contains("exit_status"), "{message}");
    h.assert_job_state(&job_id, "running").await;
    let response = h
        .job_call(Method::PUT, &job, "/finish")
        .json(&json!({"exit_status": "-1", "signal_reason": "process_run_error"}))
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let timeline = h.timeline(&job_id).await;
    assert_eq!(timeline["state"], "failed");
    assert_eq!(timeline["exit_status"], -1);
    assert_eq!(timeline["signal_reason"], "process_run_error");
}

#[tokio::test]
async fn chunks_bad_input_never_corrupts_the_log() {
    let h = start().await;
    let job_id = h.start_one_job("p", ONE_STEP).await;
    let job = h.running_job(&job_id).await;
    assert_eq!(
        h.upload_chunk(&job, 1, 0, b"good\n").await.status(),
        StatusCode::CREATED
    );
    h.job_call(Method::POST, &job, "/chunks?sequence=2&offset=5&size=4")
        .header("content-encoding", "gzip")
        .body("not gzip")
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    h.job_call(Method::POST, &job, "/chunks?sequence=2&offset=5")
        .body("abc")
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    h.job_call(Method::POST, &job, "/chunks?sequence=2&offset=5&size=9")
        .header("content-encoding", "gzip")
        .body(gzip(b"abc"))
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    let big = vec![b'x'; 2 * 1024 * 1024];
    let response = h.upload_chunk(&job, 2, 5, &big).await;
    expect_error(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    let response = h.upload_chunk(&job, 1, 0, b"evil\n").await;
    expect_error(response, StatusCode::CONFLICT).await;
    assert_eq!(
        h.emulator.job_log(job_id.parse().unwrap()).unwrap(),
        b"good\n"
    );
}

#[tokio::test]
async fn cancel_is_seen_through_job_state_and_finish_makes_canceled() {
    let h = start().await;
    let job_id = h.start_one_job("p", ONE_STEP).await;
    let job = h.running_job(&job_id).await;
    let build = h
        .v2(
            Method::PUT,
            "/organizations/acme/pipelines/p/builds/1/cancel",
        )
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(build["state"], "canceling");
    let state = h
        .job_call(Method::GET, &job, "")
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(state["state"], "canceling");
    let response = h
        .job_call(Method::PUT, &job, "/finish")
        .json(&json!({"exit_status": "-1", "signal_reason": "cancel"}))
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    h.assert_job_state(&job_id, "canceled").await;
    h.assert_build_state("p", 1, "canceled").await;
}

#[tokio::test]
async fn disconnect_returns_an_unaccepted_job_and_stop_sends_disconnect() {
    let h = start().await;
    let job_id = h.start_one_job("p", ONE_STEP).await;
    let agent = h.register(&[]).await;
    h.assert_dispatched(&agent, &job_id).await;
    h.v3(Method::POST, "/disconnect", &agent.session)
        .expect_status(StatusCode::OK)
        .await;
    h.assert_job_state(&job_id, "scheduled").await;
    let other = h.register(&["queue=other"]).await;
    let response = h
        .v2(
            Method::PUT,
            &format!("/organizations/acme/agents/{}/stop", other.id),
        )
        .json(&json!({"force": true}))
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let ping = h.ping(&other).await;
    assert_eq!(ping["action"], "disconnect");
}

#[tokio::test]
async fn root_and_streaming_pings_answer_like_buildkite() {
    let h = start().await;
    let root = h
        .http
        .get(format!("{}/", h.emulator.url()))
        .expect_json(StatusCode::OK)
        .await;
    assert!(root["message"].as_str().is_some());
    h.http
        .post(format!(
            "{}/agentedge.v1.AgentEdgeService/StreamPings",
            h.emulator.url()
        ))
        .expect_error(StatusCode::NOT_FOUND)
        .await;
    h.v3(Method::DELETE, "/ping", "bkaa_x")
        .expect_error(StatusCode::METHOD_NOT_ALLOWED)
        .await;
}

#[tokio::test]
async fn more_wrong_states_are_422() {
    let h = start().await;
    let job_id = h.start_one_job("p", ONE_STEP).await;
    let first = h.register(&[]).await;
    let second = h.register(&[]).await;
    h.assert_dispatched(&first, &job_id).await;
    let message = h
        .accept(&second, &job_id)
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert!(message.contains("another agent"), "{message}");
    h.emu(Method::POST, &format!("/jobs/{job_id}/cancel"))
        .sent()
        .await;
    h.accept(&first, &job_id)
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    expect_error(
        h.acquire(&second, &job_id).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    h.v3(Method::POST, "/disconnect", &first.session)
        .expect_status(StatusCode::OK)
        .await;
    h.v3(Method::POST, "/connect", &first.session)
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.assert_job_state(&job_id, "canceled").await;
}
