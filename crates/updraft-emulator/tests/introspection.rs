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
    let response = h
        .emu(Method::POST, "/workload")
        .json(&json!({"pipeline": "p", "builds": 3, "interval_ms": 20}))
        .send()
        .await
        .unwrap();
    let started = expect_json(response, StatusCode::ACCEPTED).await;
    assert_eq!(started["created"], json!([{"pipeline": "p", "number": 1}]));
    assert_eq!(started["pending"], 2);
    eventually("all workload builds", || async {
        let list = h
            .v2(Method::GET, "/builds")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        list.as_array().unwrap().len() == 3
    })
    .await;
    let trace = json!({"trace": [{"at_ms": 0, "pipeline": "p", "branch": "feature"}, {"at_ms": 0, "pipeline": "p"}]});
    let started = expect_json(
        h.emu(Method::POST, "/workload")
            .json(&trace)
            .send()
            .await
            .unwrap(),
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(started["created"].as_array().unwrap().len(), 2);
    let response = h
        .emu(Method::POST, "/workload")
        .json(&json!({"pipeline": "missing", "builds": 1}))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    let response = h
        .emu(Method::POST, "/workload")
        .json(&json!({"pipeline": "p", "buildz": 1}))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::BAD_REQUEST).await;
    let jobs = expect_json(
        h.emu(Method::GET, "/jobs?state=scheduled")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(jobs.as_array().unwrap().len(), 5);
    let response = h
        .emu(Method::GET, "/jobs?state=flying")
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn counters_count_requests_by_route_and_status() {
    let h = start().await;
    let agent = h.register(&[]).await;
    for _ in 0..3 {
        h.v3(Method::GET, "/ping", &agent.session)
            .send()
            .await
            .unwrap();
    }
    h.v3(Method::GET, "/ping", "bkaa_bad").send().await.unwrap();
    let counters = expect_json(
        h.emu(Method::GET, "/counters").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(counters["requests_by_route"]["GET /v3/ping"], 4);
    assert_eq!(counters["responses_by_status"]["401"], 1);
    assert_eq!(counters["agents"], 1);
}

#[tokio::test]
async fn cancel_one_job_and_read_its_timeline() {
    let h = start().await;
    h.create_pipeline("p", "steps:\n  - command: a\n  - command: b\n")
        .await;
    let jobs = script_jobs(&h.create_build("p").await);
    let canceled = expect_json(
        h.emu(Method::POST, &format!("/jobs/{}/cancel", jobs[0]))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
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
    assert_eq!(h.job_state(&jobs[1]).await, "scheduled");
    let response = h
        .emu(Method::POST, &format!("/jobs/{}/cancel", jobs[0]))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    let response = h.emu(Method::GET, "/jobs/not-a-uuid").send().await.unwrap();
    expect_error(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn rate_limit_presets_switch_at_runtime() {
    let h = start().await;
    let limits = expect_json(
        h.emu(Method::PUT, "/rate-limits")
            .json(&json!({"preset": "reference"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(limits["limits"]["list-scheduled-jobs"], 10);
    let response = h
        .v3(Method::POST, "/stacks/register", &h.agent_token())
        .json(&json!({"key": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["ratelimit-scope"], "default");
    let limits = expect_json(
        h.emu(Method::PUT, "/rate-limits")
            .json(&json!({"preset": "off"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(limits["limits"], json!({}));
    let response = h
        .emu(Method::PUT, "/rate-limits")
        .json(&json!({"preset": "sometimes"}))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
}
