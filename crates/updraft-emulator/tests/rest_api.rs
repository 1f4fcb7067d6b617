//! Conformance of REST v2 (reference §3): auth, pipelines from YAML or steps, builds
//! (create, get, list with filters, cancel, rebuild), jobs (log, env, retry, unblock),
//! agents (list, get, stop, pause), `Link` pagination and the REST rate limits.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use updraft_emulator::{EmulatorConfig, RateLimitConfig};

#[tokio::test]
async fn bearer_api_token_is_required() {
    let h = start().await;
    let pipelines = format!("{}/v2/organizations/acme/pipelines", h.emulator.url());
    let right_token_wrong_scheme = format!("Token {}", h.emulator.api_token().expose());
    for authorization in [
        None,
        Some("Bearer bkua_wrong"),
        Some(&*right_token_wrong_scheme),
    ] {
        let mut request = h.http.get(&pipelines);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.expect_error(StatusCode::UNAUTHORIZED).await;
    }
    h.v2(Method::GET, "/organizations/other/pipelines")
        .expect_error(StatusCode::NOT_FOUND)
        .await;
}

#[tokio::test]
async fn pipelines_from_yaml_or_steps_and_bad_yaml_names_the_field() {
    let h = start().await;
    let pipeline = h
        .create_pipeline("yaml", "steps:\n  - command: make\n")
        .await;
    assert_eq!(pipeline["slug"], "yaml");
    assert_eq!(pipeline["configuration"], "steps:\n  - command: make\n");
    let pipeline = h
        .v2(Method::POST, "/organizations/acme/pipelines")
        .json(&json!({"name": "Old Style", "repository": "r", "steps": [{"type": "script", "name": "build", "command": "make"}, {"type": "waiter"}, {"type": "script", "command": "test"}]}))
        .expect_json(StatusCode::CREATED).await;
    assert_eq!(pipeline["slug"], "old-style");
    let build = h.create_build("old-style").await;
    assert_eq!(build["jobs"].as_array().unwrap().len(), 3);
    let message = h
        .v2(Method::POST, "/organizations/acme/pipelines")
        .json(&json!({"name": "bad", "configuration": "steps:\n  - command: x\n    agents: 5\n"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert!(message.contains("steps[0].agents"), "{message}");
    h.v2(Method::POST, "/organizations/acme/pipelines")
        .json(&json!({"name": "yaml", "configuration": "steps: [wait]"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.v2(Method::POST, "/organizations/acme/pipelines")
        .body("{")
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    let got = h.rest_get("/organizations/acme/pipelines/yaml").await;
    assert_eq!(got["name"], "yaml");
    let list = h.rest_get("/organizations/acme/pipelines/").await;
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn builds_create_get_list_filter_and_paginate() {
    let h = start().await;
    h.create_pipeline("p", "steps:\n  - command: a\n").await;
    for _ in 0..5 {
        h.create_build("p").await;
    }
    let build = h
        .v2(Method::POST, "/organizations/acme/pipelines/p/builds")
        .json(&json!({"commit": "abc", "branch": "release/1", "meta_data": {"k": "v"}}))
        .expect_json(StatusCode::CREATED)
        .await;
    assert_eq!(build["number"], 6);
    assert_eq!(build["state"], "scheduled");
    assert_eq!(build["jobs"][0]["state"], "scheduled");
    h.v2(Method::POST, "/organizations/acme/pipelines/p/builds")
        .json(&json!({"branch": "main"}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    h.v2(Method::POST, "/organizations/acme/pipelines/missing/builds")
        .json(&json!({"commit": "a", "branch": "b"}))
        .expect_error(StatusCode::NOT_FOUND)
        .await;
    let response = h
        .v2(
            Method::GET,
            "/organizations/acme/pipelines/p/builds?per_page=2&page=2",
        )
        .sent()
        .await;
    let link = response.headers()["link"].to_str().unwrap().to_string();
    assert!(
        link.contains("rel=\"next\"")
            && link.contains("rel=\"prev\"")
            && link.contains("rel=\"last\"")
            && link.contains("page=3"),
        "{link}"
    );
    let page = expect_json(response, StatusCode::OK).await;
    let numbers: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![4, 3], "newest first");
    let filtered = h
        .rest_get("/organizations/acme/builds?branch=release/*")
        .await;
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    let filtered = h.rest_get("/builds?meta_data[k]=v&commit=abc").await;
    assert_eq!(filtered[0]["number"], 6);
    let filtered = h.rest_get("/builds?state[]=passed&state[]=finished").await;
    assert!(filtered.as_array().unwrap().is_empty());
    h.v2(Method::GET, "/builds?created_from=yesterday")
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    h.v2(Method::GET, "/organizations/acme/pipelines/p/builds/99")
        .expect_error(StatusCode::NOT_FOUND)
        .await;
}

#[tokio::test]
async fn cancel_rebuild_and_cancel_of_a_finished_build() {
    let h = start().await;
    h.create_pipeline("p", "steps:\n  - command: a\n").await;
    h.create_build("p").await;
    let canceled = h
        .v2(
            Method::PUT,
            "/organizations/acme/pipelines/p/builds/1/cancel",
        )
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(canceled["state"], "canceled");
    assert_eq!(canceled["jobs"][0]["state"], "canceled");
    let message = h
        .v2(
            Method::PUT,
            "/organizations/acme/pipelines/p/builds/1/cancel",
        )
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert!(message.contains("canceled"), "{message}");
    let rebuilt = h
        .v2(
            Method::PUT,
            "/organizations/acme/pipelines/p/builds/1/rebuild",
        )
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(rebuilt["number"], 2);
    assert_eq!(rebuilt["rebuilt_from"]["number"], 1);
    assert_eq!(rebuilt["state"], "scheduled");
}

#[tokio::test]
async fn job_log_env_and_retry() {
    let h = start().await;
    let jobs = h.start_build("p", "steps:\n  - command: a\n").await;
    let job = h.running_job(&jobs[0]).await;
    h.upload_chunk(&job, 1, 0, b"line <1>\n").await;
    h.finish(&job, "2").await;
    let base = format!("/organizations/acme/pipelines/p/builds/1/jobs/{}", jobs[0]);
    let log = h.rest_get(&format!("{base}/log")).await;
    assert_eq!(log["content"], "line <1>\n");
    assert_eq!(log["size"], 9);
    let text = h
        .v2(Method::GET, &format!("{base}/log"))
        .header("accept", "text/plain")
        .sent()
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, "line <1>\n");
    let html = h
        .v2(Method::GET, &format!("{base}/log"))
        .header("accept", "text/html")
        .sent()
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("line &lt;1&gt;"), "{html}");
    let env = h.rest_get(&format!("{base}/env")).await;
    assert_eq!(env["env"]["BUILDKITE_JOB_ID"], jobs[0].as_str());
    h.assert_build_state("p", 1, "failed").await;
    let retried = h
        .v2(Method::PUT, &format!("{base}/retry"))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(retried["state"], "scheduled");
    assert_eq!(retried["retries_count"], 1);
    let message = h
        .v2(Method::PUT, &format!("{base}/retry"))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert!(message.contains("already been retried"), "{message}");
    let build = h.get_build("p", 1).await;
    assert_eq!(
        build["state"], "running",
        "a build that had started runs again after a retry"
    );
    assert_eq!(
        build["jobs"].as_array().unwrap().len(),
        1,
        "retried jobs are hidden by default"
    );
    let all = h
        .rest_get("/organizations/acme/pipelines/p/builds/1?include_retried_jobs=true")
        .await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 2);
    h.run_job(retried["id"].as_str().unwrap(), "0").await;
    h.assert_build_state("p", 1, "passed").await;
    h.v2(Method::DELETE, &format!("{base}/log"))
        .expect_status(StatusCode::NO_CONTENT)
        .await;
    let log = h.rest_get(&format!("{base}/log")).await;
    assert_eq!(log["content"], "");
    h.v2(
        Method::PUT,
        &format!(
            "/organizations/acme/pipelines/p/builds/1/jobs/{}/retry",
            retried["id"].as_str().unwrap()
        ),
    )
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
    .await;
}

#[tokio::test]
async fn agents_list_get_stop_pause() {
    let h = start().await;
    let agent = h.register(&["queue=default"]).await;
    let _never_connected = h
        .with_agent_token(Method::POST, "/register")
        .json(&json!({"name": "idle"}))
        .sent()
        .await;
    let list = h.rest_get("/organizations/acme/agents/").await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only connected agents are listed: {list}"
    );
    assert_eq!(list[0]["connection_state"], "connected");
    let got = h
        .rest_get(&format!("/organizations/acme/agents/{}", agent.id))
        .await;
    assert_eq!(got["name"], "test-agent");
    h.v2(
        Method::PUT,
        &format!("/organizations/acme/agents/{}/pause", agent.id),
    )
    .expect_status(StatusCode::NO_CONTENT)
    .await;
    let ping = h.ping(&agent).await;
    assert_eq!(ping["action"], "pause");
    h.v2(
        Method::PUT,
        &format!("/organizations/acme/agents/{}/pause", agent.id),
    )
    .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
    .await;
    h.v2(
        Method::PUT,
        &format!("/organizations/acme/agents/{}/resume", agent.id),
    )
    .expect_status(StatusCode::NO_CONTENT)
    .await;
    h.v2(
        Method::PUT,
        &format!("/organizations/acme/agents/{}/stop", agent.id),
    )
    .json(&json!({"force": false}))
    .expect_status(StatusCode::NO_CONTENT)
    .await;
    let message = h
        .v2(
            Method::PUT,
            &format!("/organizations/acme/agents/{}/stop", agent.id),
        )
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
    assert!(message.contains("connected"), "{message}");
    h.v2(
        Method::GET,
        "/organizations/acme/agents/00000000-0000-0000-0000-000000000000",
    )
    .expect_error(StatusCode::NOT_FOUND)
    .await;
}

#[tokio::test]
async fn rest_rate_limit_per_organization() {
    let h = start_with(EmulatorConfig {
        rate_limits: RateLimitConfig {
            limits: [("rest".to_string(), 3)].into(),
        },
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        let response = h
            .v2(Method::GET, "/organizations/acme/pipelines")
            .sent()
            .await;
        assert_eq!(response.headers()["ratelimit-scope"], "rest");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = h
        .v2(Method::GET, "/organizations/acme/pipelines")
        .sent()
        .await;
    assert!(response.headers().get("retry-after").is_some());
    let body = expect_json(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert_eq!(body["scope"], "rest");
}

#[tokio::test]
async fn list_jobs_of_a_build_with_cursor_pagination() {
    let h = start().await;
    h.create_pipeline(
        "p",
        "steps:\n  - command: a\n    key: a\n  - command: b\n  - command: c\n",
    )
    .await;
    h.create_build("p").await;
    let base = "/organizations/acme/pipelines/p/builds/1/jobs";
    let page = h.rest_get(&format!("{base}?per_page=2")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["links"]["next"].as_str().unwrap().to_string();
    assert!(page["links"]["self"].as_str().is_some());
    let rest = h
        .http
        .get(&next)
        .bearer_auth(h.emulator.api_token().expose())
        .sent()
        .await;
    let rest = expect_json(rest, StatusCode::OK).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["links"].get("next").is_none());
    let keyed = h
        .rest_get(&format!("{base}?step_key=a&state[]=scheduled"))
        .await;
    assert_eq!(keyed["items"].as_array().unwrap().len(), 1);
    h.v2(Method::GET, &format!("{base}?after=nope"))
        .expect_error(StatusCode::BAD_REQUEST)
        .await;
}
