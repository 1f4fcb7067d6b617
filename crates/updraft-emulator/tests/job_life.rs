//! Job life (issue 2 §6): waits, `depends_on`, block/unblock, parallelism, skip,
//! waiting_failed, expiry of jobs nobody picks up, `timeout_in_minutes`, and the cap on
//! finished builds kept.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;
use updraft_emulator::EmulatorConfig;

#[tokio::test]
async fn wait_step_holds_later_jobs_until_earlier_ones_pass() {
    let h = start().await;
    let build = h
        .first_build(
            "p",
            "steps:\n  - command: a\n  - command: b\n  - wait\n  - command: c\n",
        )
        .await;
    let jobs = script_jobs(&build);
    let waiter = jobs_of_type(&build, "waiter")[0].clone();
    h.assert_job_state(&jobs[2], "waiting").await;
    h.run_job(&jobs[0], "0").await;
    h.assert_job_state(&jobs[2], "waiting").await;
    h.assert_build_state("p", 1, "running").await;
    h.run_job(&jobs[1], "0").await;
    h.assert_job_state(&waiter, "passed").await;
    h.assert_job_state(&jobs[2], "scheduled").await;
    h.run_job(&jobs[2], "0").await;
    h.assert_build_state("p", 1, "passed").await;
}

/// Fail the first command job of a build of `yaml`, then check the state the next command
/// job and the build are left in.
async fn after_first_job_fails(yaml: &str, next_job_state: &str, build_state: &str) {
    let h = start().await;
    let jobs = h.start_build("p", yaml).await;
    h.run_job(&jobs[0], "1").await;
    h.assert_job_state(&jobs[1], next_job_state).await;
    h.assert_build_state("p", 1, build_state).await;
}

#[tokio::test]
async fn failure_before_a_wait_makes_later_jobs_waiting_failed() {
    after_first_job_fails(
        "steps:\n  - command: a\n  - wait\n  - command: b\n",
        "waiting_failed",
        "failed",
    )
    .await;
}

#[tokio::test]
async fn continue_on_failure_and_allow_dependency_failure_carry_on() {
    after_first_job_fails(
        "steps:\n  - command: a\n  - wait: ~\n    continue_on_failure: true\n  - command: b\n",
        "scheduled",
        "failing",
    )
    .await;
}

#[tokio::test]
async fn depends_on_orders_jobs_and_unknown_keys_are_rejected() {
    let h = start().await;
    let jobs = h
        .start_build(
            "p",
            "steps:\n  - command: test\n    depends_on: build\n  - command: make\n    key: build\n",
        )
        .await;
    h.assert_job_state(&jobs[0], "waiting").await;
    h.assert_job_state(&jobs[1], "scheduled").await;
    h.run_job(&jobs[1], "0").await;
    h.assert_job_state(&jobs[0], "scheduled").await;
    h.create_pipeline("bad", "steps:\n  - command: x\n    depends_on: nowhere\n")
        .await;
    let message = h
        .v2(Method::POST, "/organizations/acme/pipelines/bad/builds")
        .json(&json!({"commit": "a", "branch": "b"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert!(
        message.contains("steps[0].depends_on") && message.contains("nowhere"),
        "{message}"
    );
}

#[tokio::test]
async fn block_step_blocks_the_build_until_unblocked() {
    let h = start().await;
    let build = h
        .first_build(
            "p",
            "steps:\n  - command: a\n  - block: ship it?\n  - command: deploy\n",
        )
        .await;
    let jobs = script_jobs(&build);
    let block = jobs_of_type(&build, "manual")[0].clone();
    h.run_job(&jobs[0], "0").await;
    h.assert_job_state(&block, "blocked").await;
    h.assert_job_state(&jobs[1], "waiting").await;
    h.assert_build_state("p", 1, "blocked").await;
    let agent = h.register(&[]).await;
    let response = h.acquire(&agent, &jobs[1]).await;
    assert_eq!(response.status(), StatusCode::LOCKED);
    let base = "/organizations/acme/pipelines/p/builds/1/jobs";
    let unblocked = h
        .v2(Method::PUT, &format!("{base}/{block}/unblock"))
        .json(&json!({"fields": {}}))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(unblocked["state"], "unblocked");
    h.assert_job_state(&jobs[1], "scheduled").await;
    h.v2(Method::PUT, &format!("{base}/{block}/unblock"))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.run_job(&jobs[1], "0").await;
    h.assert_build_state("p", 1, "passed").await;
}

#[tokio::test]
async fn parallelism_makes_indexed_jobs_and_skip_skips() {
    let h = start().await;
    let build = h.first_build("p", "steps:\n  - command: shard\n    parallelism: 3\n  - command: never\n    skip: not today\n").await;
    let jobs = script_jobs(&build);
    assert_eq!(jobs.len(), 4);
    let agent = h.register(&[]).await;
    let job = h.acquire_ok(&agent, &jobs[2]).await;
    assert_eq!(job["env"]["BUILDKITE_PARALLEL_JOB"], "2");
    assert_eq!(job["env"]["BUILDKITE_PARALLEL_JOB_COUNT"], "3");
    h.assert_job_state(&jobs[3], "skipped").await;
}

#[tokio::test]
async fn scheduled_jobs_nobody_picks_up_expire() {
    let h = start_with(EmulatorConfig {
        scheduled_job_expiry: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let jobs = h.start_build("p", "steps:\n  - command: a\n").await;
    eventually("the job to expire", || async {
        h.job_state(&jobs[0]).await == "expired"
    })
    .await;
    h.assert_build_state("p", 1, "failed").await;
    let rest = h.get_build("p", 1).await;
    assert!(rest["jobs"][0]["expired_at"].as_str().is_some());
}

#[tokio::test]
async fn timeout_in_minutes_moves_a_running_job_to_timing_out_then_timed_out() {
    let h = start_with(EmulatorConfig {
        minute: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let jobs = h
        .start_build(
            "p",
            "steps:\n  - command: sleep 999\n    timeout_in_minutes: 1\n",
        )
        .await;
    let agent = h.register(&[]).await;
    let job = h.acquire_ok(&agent, &jobs[0]).await;
    assert_eq!(job["env"]["BUILDKITE_TIMEOUT"], "1");
    h.start_job(&job).await;
    let token = job["token"].as_str().unwrap().to_string();
    eventually("the job to time out", || async {
        let state = h
            .v3(Method::GET, &format!("/jobs/{}", jobs[0]), &token)
            .sent()
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap();
        state["state"] == "timing_out"
    })
    .await;
    h.finish(&job, "-1").await;
    h.assert_job_state(&jobs[0], "timed_out").await;
    let retried = h
        .v2(
            Method::PUT,
            &format!(
                "/organizations/acme/pipelines/p/builds/1/jobs/{}/retry",
                jobs[0]
            ),
        )
        .sent()
        .await;
    assert_eq!(
        retried.status(),
        StatusCode::OK,
        "timed out jobs can be retried"
    );
}

#[tokio::test]
async fn finished_builds_beyond_the_cap_are_forgotten() {
    let h = start_with(EmulatorConfig {
        max_finished_builds: 2,
        ..Default::default()
    })
    .await;
    h.create_pipeline("p", "steps:\n  - command: a\n").await;
    for _ in 0..4 {
        h.create_build("p").await;
    }
    for number in 1..=4 {
        h.v2(
            Method::PUT,
            &format!("/organizations/acme/pipelines/p/builds/{number}/cancel"),
        )
        .sent()
        .await;
    }
    let list = h.rest_get("/organizations/acme/pipelines/p/builds").await;
    let numbers: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![4, 3]);
    let counters = h.emu_get("/counters").await;
    assert_eq!(counters["builds_evicted"], 2);
    assert_eq!(counters["jobs_kept"], 2);
}

#[tokio::test]
async fn pipeline_upload_is_202_with_location_then_applied_once() {
    let h = start().await;
    let build = h
        .first_build(
            "p",
            "steps:\n  - command: buildkite-agent pipeline upload\n  - wait\n  - command: after\n",
        )
        .await;
    let jobs = script_jobs(&build);
    let job = h.running_job(&jobs[0]).await;
    let token = job["token"].as_str().unwrap();
    let body =
        json!({"uuid": "u-1", "pipeline": {"steps": [{"command": "uploaded", "key": "up"}]}});
    let response = h
        .v3(
            Method::POST,
            &format!("/jobs/{}/pipelines?async=true", jobs[0]),
            token,
        )
        .json(&body)
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.ends_with(&format!("/jobs/{}/pipelines/u-1", jobs[0])),
        "{location}"
    );
    let status = h
        .http
        .get(&location)
        .header("authorization", format!("Token {token}"))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(status["state"], "applied");
    let again = h
        .v3(
            Method::POST,
            &format!("/jobs/{}/pipelines?async=true", jobs[0]),
            token,
        )
        .json(&body)
        .sent()
        .await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    let build = h.get_build("p", 1).await;
    let uploaded: Vec<_> = build["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["command"] == "uploaded")
        .collect();
    assert_eq!(uploaded.len(), 1, "a retried upload is applied once");
    let bad = json!({"uuid": "u-2", "pipeline": {"steps": [{"commandz": "x"}]}});
    h.v3(
        Method::POST,
        &format!("/jobs/{}/pipelines?async=true", jobs[0]),
        token,
    )
    .json(&bad)
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
    .await;
    h.finish(&job, "0").await;
    let uploaded_id = uploaded[0]["id"].as_str().unwrap().to_string();
    h.assert_job_state(&uploaded_id, "scheduled").await;
    assert_eq!(
        h.job_state(&jobs[1]).await,
        "waiting",
        "the later wait also waits for uploaded steps"
    );
    h.run_job(&uploaded_id, "0").await;
    h.assert_job_state(&jobs[1], "scheduled").await;
}

#[tokio::test]
async fn meta_data_set_get_exists_keys_through_job_and_build_scopes() {
    let h = start().await;
    let build = h.first_build("p", "steps:\n  - command: a\n").await;
    let jobs = script_jobs(&build);
    let build_id = build["id"].as_str().unwrap();
    let agent = h.register(&[]).await;
    let job = h.acquire_ok(&agent, &jobs[0]).await;
    let token = job["token"].as_str().unwrap();
    let job_path = format!("/jobs/{}/data", jobs[0]);
    let response = h
        .v3(Method::POST, &format!("{job_path}/set"), token)
        .json(&json!({"key": "release", "value": "v1"}))
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    h.v3(Method::POST, &format!("{job_path}/set"), token)
        .json(&json!({"key": " ", "value": "v1"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.v3(Method::POST, &format!("{job_path}/set-batch"), token)
        .json(&json!({"items": [{"key": "a", "value": "1"}, {"key": "", "value": "2"}]}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    let got = h
        .v3(Method::POST, &format!("/builds/{build_id}/data/get"), token)
        .json(&json!({"key": "release"}))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(got, json!({"key": "release", "value": "v1"}));
    let missing = h
        .v3(Method::POST, &format!("{job_path}/get"), token)
        .json(&json!({"key": "a"}))
        .sent()
        .await;
    expect_error(missing, StatusCode::NOT_FOUND).await;
    let exists = h
        .v3(Method::POST, &format!("{job_path}/exists"), token)
        .json(&json!({"key": "release"}))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(exists["exists"], true);
    let keys = h
        .v3(Method::POST, &format!("{job_path}/keys"), token)
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(keys, json!(["release"]));
    h.v3(Method::POST, &format!("{job_path}/keys"), "bkaj_other")
        .expect_error(StatusCode::UNAUTHORIZED)
        .await;
}

#[tokio::test]
async fn annotations_create_append_validate_and_delete() {
    let h = start().await;
    let jobs = h.start_build("p", "steps:\n  - command: a\n").await;
    let agent = h.register(&[]).await;
    let job = h.acquire_ok(&agent, &jobs[0]).await;
    let token = job["token"].as_str().unwrap();
    let path = format!("/jobs/{}/annotations", jobs[0]);
    let response = h
        .v3(Method::POST, &path, token)
        .json(&json!({"body": "hi", "context": "cov.report", "style": "info"}))
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    h.v3(Method::POST, &path, token)
        .json(&json!({"body": "x", "style": "purple"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.v3(Method::POST, &path, token)
        .json(&json!({"body": "x", "context": "c".repeat(101)}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    // The agent escapes `.` as %2E in path segments (reference §1.1).
    let response = h
        .v3(
            Method::DELETE,
            &format!("{path}/cov%2Ereport?scope=build"),
            token,
        )
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    h.v3(Method::DELETE, &format!("{path}/cov%2Ereport"), token)
        .expect_error(StatusCode::NOT_FOUND)
        .await;
}

#[tokio::test]
async fn metrics_count_jobs_and_agents_per_queue() {
    let h = start().await;
    let jobs = h.start_build("p", "steps:\n  - command: a\n  - command: b\n    agents: {queue: gpu}\n  - wait\n  - command: c\n").await;
    let agent = h.register(&["queue=default"]).await;
    h.register(&["queue=gpu"]).await;
    let job = h.acquire_ok(&agent, &jobs[0]).await;
    h.start_job(&job).await;
    let response = h.with_agent_token(Method::GET, "/metrics").sent().await;
    assert!(response
        .headers()
        .get("buildkite-agent-metrics-poll-duration")
        .is_some());
    let metrics = expect_json(response, StatusCode::OK).await;
    assert_eq!(metrics["organization"]["slug"], "acme");
    assert_eq!(metrics["jobs"]["running"], 1);
    assert_eq!(metrics["jobs"]["scheduled"], 1);
    assert_eq!(metrics["jobs"]["waiting"], 1);
    assert_eq!(metrics["jobs"]["total"], 3);
    assert_eq!(metrics["jobs"]["queues"]["gpu"]["scheduled"], 1);
    assert_eq!(metrics["agents"]["busy"], 1);
    assert_eq!(metrics["agents"]["idle"], 1);
    assert_eq!(metrics["agents"]["queues"]["gpu"]["idle"], 1);
    let queue = h
        .with_agent_token(Method::GET, "/metrics/queue?name=gpu")
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(queue["jobs"]["scheduled"], 1);
    assert!(queue["jobs"].get("queues").is_none());
    h.v3(Method::GET, "/metrics", "bkaa_session")
        .expect_error(StatusCode::UNAUTHORIZED)
        .await;
}

#[tokio::test]
async fn steps_filtered_out_by_branches_are_broken_and_do_not_fail_the_build() {
    let h = start().await;
    h.create_pipeline("p", "steps:\n  - command: deploy\n    branches: 'main !main-old'\n  - wait\n  - command: after\n").await;
    let build = h
        .v2(Method::POST, "/organizations/acme/pipelines/p/builds")
        .json(&json!({"commit": "a", "branch": "feature"}))
        .expect_json(StatusCode::CREATED)
        .await;
    let jobs = script_jobs(&build);
    assert_eq!(build["jobs"][0]["state"], "broken");
    assert_eq!(build["jobs"][0]["broken_reason"], "branch_mismatch");
    h.assert_job_state(&jobs[1], "scheduled").await;
    h.run_job(&jobs[1], "0").await;
    h.assert_build_state("p", 1, "passed").await;
}

#[tokio::test]
async fn concurrency_groups_limit_jobs_across_builds() {
    let h = start().await;
    let first = h
        .start_build(
            "deploy",
            "steps:\n  - command: deploy\n    concurrency: 1\n    concurrency_group: prod\n",
        )
        .await;
    let second = script_jobs(&h.create_build("deploy").await);
    let third = script_jobs(&h.create_build("deploy").await);
    h.assert_job_state(&first[0], "scheduled").await;
    h.assert_job_state(&second[0], "limited").await;
    h.assert_job_state(&third[0], "limited").await;
    let agent = h.register(&[]).await;
    assert_eq!(
        h.acquire(&agent, &second[0]).await.status(),
        StatusCode::LOCKED
    );
    h.v2(
        Method::PUT,
        "/organizations/acme/pipelines/deploy/builds/3/cancel",
    )
    .sent()
    .await;
    h.assert_job_state(&third[0], "canceled").await;
    h.run_job(&first[0], "0").await;
    assert_eq!(
        h.job_state(&second[0]).await,
        "scheduled",
        "the oldest limited job takes the free slot"
    );
    let message = h.v2(Method::POST, "/organizations/acme/pipelines").json(&json!({"name": "bad", "configuration": "steps:\n  - command: x\n    concurrency: 1\n"})).expect_error(StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(message.contains("concurrency_group"), "{message}");
}
