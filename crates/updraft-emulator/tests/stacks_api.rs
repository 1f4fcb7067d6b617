//! Conformance of the Stacks API (reference §1.7): register, scheduled-jobs paging and
//! queues, batch-reserve with expiry, job acquisition tokens, get job, get-states, finish,
//! notifications and rate limits.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use updraft_emulator::{EmulatorConfig, RateLimitConfig};

async fn register_stack(h: &Harness, key: &str, queue: &str) -> Value {
    let response = h
        .with_agent_token(Method::POST, "/stacks/register")
        .json(&json!({"key": key, "type": "custom", "queue_key": queue, "metadata": {"v": "1"}}))
        .sent()
        .await;
    expect_json(response, StatusCode::CREATED).await
}

async fn scheduled(h: &Harness, key: &str, query: &str) -> Value {
    let response = h
        .with_agent_token(
            Method::GET,
            &format!("/stacks/{key}/scheduled-jobs?{query}"),
        )
        .sent()
        .await;
    expect_json(response, StatusCode::OK).await
}

async fn reserve(h: &Harness, key: &str, ids: &[&str], expiry: Option<u64>) -> Value {
    let mut body = json!({"job_uuids": ids});
    if let Some(seconds) = expiry {
        body["reservation_expiry_seconds"] = json!(seconds);
    }
    let response = h
        .with_agent_token(
            Method::PUT,
            &format!("/stacks/{key}/scheduled-jobs/batch-reserve"),
        )
        .json(&body)
        .sent()
        .await;
    expect_json(response, StatusCode::OK).await
}

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn register_is_201_then_200_and_needs_the_agent_token() {
    let h = start().await;
    let stack = register_stack(&h, "s1", "_default").await;
    assert_eq!(stack["key"], "s1");
    assert_eq!(stack["cluster_queue_key"], "default");
    assert_eq!(stack["state"], "connected");
    let response = h
        .with_agent_token(Method::POST, "/stacks/register")
        .json(&json!({"key": "s1", "type": "custom", "queue_key": "_default"}))
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    h.v3(Method::POST, "/stacks/register", "bkct_bad")
        .json(&json!({"key": "s2"}))
        .expect_error(StatusCode::UNAUTHORIZED)
        .await;
    h.with_agent_token(Method::POST, "/stacks/register")
        .json(&json!({"key": "s3", "type": "mainframe"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    let response = h
        .with_agent_token(Method::POST, "/stacks/s1/deregister")
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    h.with_agent_token(Method::GET, "/stacks/nope/scheduled-jobs")
        .expect_error(StatusCode::NOT_FOUND)
        .await;
}

#[tokio::test]
async fn scheduled_jobs_oldest_first_with_cursor_and_queue_aliases() {
    let h = start().await;
    h.create_pipeline(
        "p",
        "steps:\n  - command: a\n  - command: b\n    agents: {queue: other}\n",
    )
    .await;
    for _ in 0..3 {
        h.create_build("p").await;
    }
    register_stack(&h, "s", "__default__").await;
    let page = scheduled(&h, "s", "limit=2").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(page["page_info"]["has_next_page"], true);
    assert_eq!(page["cluster_queue"]["paused"], false);
    assert_eq!(page["cluster_queue"]["dispatch_paused"], false);
    let job = &page["jobs"][0];
    for field in [
        "id",
        "priority",
        "agent_query_rules",
        "scheduled_at",
        "pipeline",
        "build",
        "step",
    ] {
        assert!(
            job.get(field).is_some(),
            "scheduled job lacks {field}: {job}"
        );
    }
    assert_eq!(job["build"]["number"], 1);
    let cursor = page["page_info"]["end_cursor"].as_str().unwrap();
    let rest = scheduled(&h, "s", &format!("limit=2&after={cursor}")).await;
    assert_eq!(rest["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(rest["jobs"][0]["build"]["number"], 3);
    assert_eq!(rest["page_info"]["has_next_page"], false);
    for alias in ["_default", "__default__", "~", "-"] {
        assert_eq!(
            ids(&scheduled(&h, "s", &format!("queue_key={alias}")).await).len(),
            3,
            "alias {alias}"
        );
    }
    assert_eq!(ids(&scheduled(&h, "s", "queue_key=other").await).len(), 3);
    h.with_agent_token(Method::GET, "/stacks/s/scheduled-jobs?limit=1001")
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    h.with_agent_token(Method::GET, "/stacks/s/scheduled-jobs?after=garbage")
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    h.emu(Method::PUT, "/queues/default/pause").sent().await;
    assert_eq!(
        scheduled(&h, "s", "").await["cluster_queue"]["dispatch_paused"],
        true
    );
}

#[tokio::test]
async fn reserved_jobs_leave_the_list_until_the_reservation_lapses() {
    let h = start().await;
    h.create_pipeline("p", "steps:\n  - command: a\n").await;
    h.create_build("p").await;
    h.create_build("p").await;
    register_stack(&h, "s", "default").await;
    let all = ids(&scheduled(&h, "s", "").await);
    let result = reserve(
        &h,
        "s",
        &[&all[0], "00000000-0000-0000-0000-000000000000"],
        Some(1),
    )
    .await;
    assert_eq!(result["reserved"], json!([all[0]]));
    assert_eq!(
        result["not_reserved"],
        json!(["00000000-0000-0000-0000-000000000000"])
    );
    h.assert_job_state(&all[0], "reserved").await;
    assert_eq!(ids(&scheduled(&h, "s", "").await), vec![all[1].clone()]);
    register_stack(&h, "other", "default").await;
    assert_eq!(
        reserve(&h, "other", &[&all[0]], None).await["not_reserved"],
        json!([all[0]])
    );
    assert_eq!(
        reserve(&h, "s", &[&all[0]], Some(1)).await["reserved"],
        json!([all[0]]),
        "re-reserving extends"
    );
    eventually("reservation to lapse", || async {
        h.job_state(&all[0]).await == "scheduled"
    })
    .await;
    assert_eq!(ids(&scheduled(&h, "s", "").await), all);
    h.with_agent_token(Method::PUT, "/stacks/s/scheduled-jobs/batch-reserve")
        .json(&json!({"job_uuids": ["x"]}))
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    h.with_agent_token(Method::PUT, "/stacks/s/scheduled-jobs/batch-reserve")
        .json(&json!({"job_uuids": [], "reservation_expiry_seconds": 3601}))
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
}

#[tokio::test]
async fn acquisition_tokens_only_for_reserved_jobs_and_scope_the_session() {
    let h = start().await;
    let build = h
        .first_build("p", "steps:\n  - command: a\n  - command: b\n")
        .await;
    let jobs = script_jobs(&build);
    register_stack(&h, "s", "default").await;
    reserve(&h, "s", &[&jobs[0]], None).await;
    let body = h
        .with_agent_token(Method::POST, "/stacks/s/job-acquisition-tokens")
        .json(&json!({"job_uuids": [jobs[0], jobs[1]], "token_lifetime_seconds": 60}))
        .expect_json(StatusCode::CREATED)
        .await;
    assert_eq!(body["not_issued"], json!([jobs[1]]));
    let jat = body["job_acquisition_tokens"][0]["job_acquisition_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        body["job_acquisition_tokens"][0]["job_uuid"],
        jobs[0].as_str()
    );
    assert!(body["job_acquisition_tokens"][0]["expires_at"]
        .as_str()
        .is_some());
    let agent = h.register_with(&jat, &[], true).await;
    expect_error(h.acquire(&agent, &jobs[1]).await, StatusCode::FORBIDDEN).await;
    let job = h.acquire_ok(&agent, &jobs[0]).await;
    assert_eq!(job["id"], jobs[0].as_str());
    // The JAT is no agent token: it cannot reach the Stacks API.
    h.v3(Method::GET, "/stacks/s/scheduled-jobs", &jat)
        .expect_error(StatusCode::UNAUTHORIZED)
        .await;
}

#[tokio::test]
async fn acquisition_tokens_for_another_queue_are_forbidden() {
    let h = start().await;
    let jobs = h
        .start_build("p", "steps:\n  - command: a\n    agents: {queue: gpu}\n")
        .await;
    register_stack(&h, "s", "default").await;
    h.with_agent_token(Method::POST, "/stacks/s/job-acquisition-tokens")
        .json(&json!({"job_uuids": [jobs[0]]}))
        .expect_error(StatusCode::FORBIDDEN)
        .await;
}

#[tokio::test]
async fn get_job_get_states_finish_and_notifications() {
    let h = start().await;
    let jobs = h.start_build("p", "steps:\n  - command: make test\n").await;
    register_stack(&h, "s", "default").await;
    let job = h
        .with_agent_token(Method::GET, &format!("/stacks/s/jobs/{}", jobs[0]))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(job["command"], "make test");
    assert_eq!(job["env"]["BUILDKITE_JOB_ID"], jobs[0].as_str());
    let states = h
        .with_agent_token(Method::POST, "/stacks/s/jobs/get-states")
        .json(&json!({"job_uuids": [jobs[0]]}))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(states["states"][&jobs[0]], "scheduled");
    let body = h.with_agent_token(Method::POST, "/stacks/s/notifications")
        .json(&json!({"notifications": [{"job_uuid": jobs[0], "detail": "waiting for capacity"}, {"job_uuid": "00000000-0000-0000-0000-000000000000", "detail": "x"}, {"job_uuid": jobs[0], "detail": "y".repeat(300)}]}))
        .expect_json(StatusCode::OK).await;
    assert_eq!(body["errors"].as_array().unwrap().len(), 2, "{body}");
    let timeline = h.timeline(&jobs[0]).await;
    assert_eq!(
        timeline["notifications"][0]["detail"],
        "waiting for capacity"
    );
    let response = h
        .with_agent_token(Method::POST, &format!("/stacks/s/jobs/{}/finish", jobs[0]))
        .json(&json!({"detail": "image pull failed"}))
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let timeline = h.timeline(&jobs[0]).await;
    assert_eq!(timeline["state"], "failed");
    assert_eq!(timeline["exit_status"], -1);
    assert_eq!(timeline["signal_reason"], "stack_error");
    assert_eq!(timeline["stack_finish_detail"], "image pull failed");
    h.with_agent_token(Method::POST, &format!("/stacks/s/jobs/{}/finish", jobs[0]))
        .json(&json!({"detail": "again"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.with_agent_token(Method::POST, &format!("/stacks/s/jobs/{}/finish", jobs[0]))
        .json(&json!({"detail": "z".repeat(5000)}))
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
}

#[tokio::test]
async fn reference_rate_limits_answer_429_with_headers() {
    let h = start_with(EmulatorConfig {
        rate_limits: RateLimitConfig::reference(),
        ..Default::default()
    })
    .await;
    register_stack(&h, "s", "default").await;
    let mut limited = None;
    for _ in 0..11 {
        let response = h
            .with_agent_token(Method::GET, "/stacks/s/scheduled-jobs")
            .sent()
            .await;
        assert_eq!(response.headers()["ratelimit-scope"], "list-scheduled-jobs");
        assert_eq!(response.headers()["ratelimit-limit"], "10");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("the 11th request within a second is limited");
    assert!(response.headers().get("retry-after").is_some());
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
    let body = expect_json(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["scope"], "list-scheduled-jobs");
    assert_eq!(body["limit"], 10);
    assert!(body["message"].as_str().is_some() && body["reset"].as_u64().is_some());
    // Other scopes have their own budget.
    let response = h
        .with_agent_token(Method::POST, "/stacks/s/jobs/get-states")
        .json(&json!({"job_uuids": []}))
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = h
        .with_agent_token(Method::GET, "/stacks/s/scheduled-jobs")
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}
