//! `/_emulator/` introspection: job timelines, counters by route, workloads (N builds at
//! offsets, or a trace), cancelling one job, rate-limit presets.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn workload_creates_builds_now_and_later() {
    let h = start().await;
    h.create_pipeline("p", "steps:\n  - command: a\n").await;
    let started = h
        .emu(Method::POST, "/workload")
        .json(&json!({"pipeline": "p", "builds": 3, "interval_ms": 20}))
        .expect_json(StatusCode::ACCEPTED)
        .await;
    assert_eq!(started["created"], json!([{"pipeline": "p", "number": 1}]));
    assert_eq!(started["pending"], 2);
    eventually("all workload builds", || async {
        let list = h
            .v2(Method::GET, "/builds")
            .sent()
            .await
            .json::<Value>()
            .await
            .unwrap();
        list.as_array().unwrap().len() == 3
    })
    .await;
    let trace = json!({"trace": [{"at_ms": 0, "pipeline": "p", "branch": "feature"}, {"at_ms": 0, "pipeline": "p"}]});
    let started = h
        .emu(Method::POST, "/workload")
        .json(&trace)
        .expect_json(StatusCode::ACCEPTED)
        .await;
    assert_eq!(started["created"].as_array().unwrap().len(), 2);
    h.emu(Method::POST, "/workload")
        .json(&json!({"pipeline": "missing", "builds": 1}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.emu(Method::POST, "/workload")
        .json(&json!({"pipeline": "p", "buildz": 1}))
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    let jobs = h.emu_get("/jobs?state=scheduled").await;
    assert_eq!(jobs.as_array().unwrap().len(), 5);
    h.emu(Method::GET, "/jobs?state=flying")
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
}

#[tokio::test]
async fn counters_count_requests_by_route_and_status() {
    let h = start().await;
    let agent = h.register(&[]).await;
    for _ in 0..3 {
        h.v3(Method::GET, "/ping", &agent.session).sent().await;
    }
    h.v3(Method::GET, "/ping", "bkaa_bad").sent().await;
    let counters = h.emu_get("/counters").await;
    assert_eq!(counters["requests_by_route"]["GET /v3/ping"], 4);
    assert_eq!(counters["responses_by_status"]["401"], 1);
    assert_eq!(counters["agents"], 1);
}

#[tokio::test]
async fn cancel_one_job_and_read_its_timeline() {
    let h = start().await;
    let jobs = h
        .start_build("p", "steps:\n  - command: a\n  - command: b\n")
        .await;
    let canceled = h
        .emu(Method::POST, &format!("/jobs/{}/cancel", jobs[0]))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(canceled["state"], "canceled");
    let timeline = h.timeline(&jobs[0]).await;
    let last = timeline["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["state"], "canceled");
    assert!(last["at"].as_str().is_some() && last["reason"].as_str().is_some());
    h.assert_job_state(&jobs[1], "scheduled").await;
    h.emu(Method::POST, &format!("/jobs/{}/cancel", jobs[0]))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.emu(Method::GET, "/jobs/not-a-uuid")
        .expect_error(StatusCode::NOT_FOUND)
        .await;
}

#[tokio::test]
async fn rate_limit_presets_switch_at_runtime() {
    let h = start().await;
    let limits = h
        .emu(Method::PUT, "/rate-limits")
        .json(&json!({"preset": "reference"}))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(limits["limits"]["list-scheduled-jobs"], 10);
    let response = h
        .with_agent_token(Method::POST, "/stacks/register")
        .json(&json!({"key": "s"}))
        .sent()
        .await;
    assert_eq!(response.headers()["ratelimit-scope"], "default");
    let limits = h
        .emu(Method::PUT, "/rate-limits")
        .json(&json!({"preset": "off"}))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(limits["limits"], json!({}));
    h.emu(Method::PUT, "/rate-limits")
        .json(&json!({"preset": "sometimes"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
}
