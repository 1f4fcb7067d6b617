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
    let response = h
        .http
        .get(format!(
            "{}/v2/organizations/acme/pipelines",
            h.emulator.url()
        ))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNAUTHORIZED).await;
    let response = h
        .http
        .get(format!(
            "{}/v2/organizations/acme/pipelines",
            h.emulator.url()
        ))
        .bearer_auth("bkua_wrong")
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNAUTHORIZED).await;
    let response = h
        .http
        .get(format!(
            "{}/v2/organizations/acme/pipelines",
            h.emulator.url()
        ))
        .header(
            "authorization",
            format!("Token {}", h.emulator.api_token().expose()),
        )
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNAUTHORIZED).await;
    let response = h
        .v2(Method::GET, "/organizations/other/pipelines")
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn pipelines_from_yaml_or_steps_and_bad_yaml_names_the_field() {
    let h = start().await;
    let pipeline = h
        .create_pipeline("yaml", "steps:\n  - command: make\n")
        .await;
    assert_eq!(pipeline["slug"], "yaml");
    assert_eq!(pipeline["configuration"], "steps:\n  - command: make\n");
    let response = h
        .v2(Method::POST, "/organizations/acme/pipelines")
        .json(&json!({"name": "Old Style", "repository": "r", "steps": [{"type": "script", "name": "build", "command": "make"}, {"type": "waiter"}, {"type": "script", "command": "test"}]}))
        .send()
        .await
        .unwrap();
    let pipeline = expect_json(response, StatusCode::CREATED).await;
    assert_eq!(pipeline["slug"], "old-style");
    let build = h.create_build("old-style").await;
    assert_eq!(build["jobs"].as_array().unwrap().len(), 3);
    let response = h
        .v2(Method::POST, "/organizations/acme/pipelines")
        .json(&json!({"name": "bad", "configuration": "steps:\n  - command: x\n    agents: 5\n"}))
        .send()
        .await
        .unwrap();
    let message = expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(message.contains("steps[0].agents"), "{message}");
    let response = h
        .v2(Method::POST, "/organizations/acme/pipelines")
        .json(&json!({"name": "yaml", "configuration": "steps: [wait]"}))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    let response = h
        .v2(Method::POST, "/organizations/acme/pipelines")
        .body("{")
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::BAD_REQUEST).await;
    let got = expect_json(
        h.v2(Method::GET, "/organizations/acme/pipelines/yaml")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(got["name"], "yaml");
    let list = expect_json(
        h.v2(Method::GET, "/organizations/acme/pipelines/")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn builds_create_get_list_filter_and_paginate() {
    let h = start().await;
    h.create_pipeline("p", "steps:\n  - command: a\n").await;
    for _ in 0..5 {
        h.create_build("p").await;
    }
    let response = h
        .v2(Method::POST, "/organizations/acme/pipelines/p/builds")
        .json(&json!({"commit": "abc", "branch": "release/1", "meta_data": {"k": "v"}}))
        .send()
        .await
        .unwrap();
    let build = expect_json(response, StatusCode::CREATED).await;
    assert_eq!(build["number"], 6);
    assert_eq!(build["state"], "scheduled");
    assert_eq!(build["jobs"][0]["state"], "scheduled");
    let response = h
        .v2(Method::POST, "/organizations/acme/pipelines/p/builds")
        .json(&json!({"branch": "main"}))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    let response = h
        .v2(Method::POST, "/organizations/acme/pipelines/missing/builds")
        .json(&json!({"commit": "a", "branch": "b"}))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::NOT_FOUND).await;
    let response = h
        .v2(
            Method::GET,
            "/organizations/acme/pipelines/p/builds?per_page=2&page=2",
        )
        .send()
        .await
        .unwrap();
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
    let filtered = expect_json(
        h.v2(Method::GET, "/organizations/acme/builds?branch=release/*")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    let filtered = expect_json(
        h.v2(Method::GET, "/builds?meta_data[k]=v&commit=abc")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(filtered[0]["number"], 6);
    let filtered = expect_json(
        h.v2(Method::GET, "/builds?state[]=passed&state[]=finished")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(filtered.as_array().unwrap().is_empty());
    let response = h
        .v2(Method::GET, "/builds?created_from=yesterday")
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::BAD_REQUEST).await;
    let response = h
        .v2(Method::GET, "/organizations/acme/pipelines/p/builds/99")
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn cancel_rebuild_and_cancel_of_a_finished_build() {
    let h = start().await;
    h.create_pipeline("p", "steps:\n  - command: a\n").await;
    h.create_build("p").await;
    let canceled = expect_json(
        h.v2(
            Method::PUT,
            "/organizations/acme/pipelines/p/builds/1/cancel",
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(canceled["state"], "canceled");
    assert_eq!(canceled["jobs"][0]["state"], "canceled");
    let message = expect_error(
        h.v2(
            Method::PUT,
            "/organizations/acme/pipelines/p/builds/1/cancel",
        )
        .send()
        .await
        .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(message.contains("canceled"), "{message}");
    let rebuilt = expect_json(
        h.v2(
            Method::PUT,
            "/organizations/acme/pipelines/p/builds/1/rebuild",
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(rebuilt["number"], 2);
    assert_eq!(rebuilt["rebuilt_from"]["number"], 1);
    assert_eq!(rebuilt["state"], "scheduled");
}

#[tokio::test]
async fn job_log_env_and_retry() {
    let h = start().await;
    h.create_pipeline("p", "steps:\n  - command: a\n").await;
    let jobs = script_jobs(&h.create_build("p").await);
    let agent = h.register(&[]).await;
    let job = expect_json(h.acquire(&agent, &jobs[0]).await, StatusCode::OK).await;
    h.start_job(&job).await;
    h.upload_chunk(&job, 1, 0, b"line <1>\n").await;
    h.finish(&job, "2").await;
    let base = format!("/organizations/acme/pipelines/p/builds/1/jobs/{}", jobs[0]);
    let log = expect_json(
        h.v2(Method::GET, &format!("{base}/log"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(log["content"], "line <1>\n");
    assert_eq!(log["size"], 9);
    let text = h
        .v2(Method::GET, &format!("{base}/log"))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "line <1>\n");
    let html = h
        .v2(Method::GET, &format!("{base}/log"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("line &lt;1&gt;"), "{html}");
    let env = expect_json(
        h.v2(Method::GET, &format!("{base}/env"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(env["env"]["BUILDKITE_JOB_ID"], jobs[0].as_str());
    assert_eq!(h.get_build("p", 1).await["state"], "failed");
    let retried = expect_json(
        h.v2(Method::PUT, &format!("{base}/retry"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(retried["state"], "scheduled");
    assert_eq!(retried["retries_count"], 1);
    let message = expect_error(
        h.v2(Method::PUT, &format!("{base}/retry"))
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
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
    let all = expect_json(
        h.v2(
            Method::GET,
            "/organizations/acme/pipelines/p/builds/1?include_retried_jobs=true",
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 2);
    h.run_job(retried["id"].as_str().unwrap(), "0").await;
    assert_eq!(h.get_build("p", 1).await["state"], "passed");
    assert_eq!(
        h.v2(Method::DELETE, &format!("{base}/log"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    let log = expect_json(
        h.v2(Method::GET, &format!("{base}/log"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(log["content"], "");
    let response = h
        .v2(
            Method::PUT,
            &format!(
                "/organizations/acme/pipelines/p/builds/1/jobs/{}/retry",
                retried["id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn agents_list_get_stop_pause() {
    let h = start().await;
    let agent = h.register(&["queue=default"]).await;
    let _never_connected = h
        .v3(Method::POST, "/register", &h.agent_token())
        .json(&json!({"name": "idle"}))
        .send()
        .await
        .unwrap();
    let list = expect_json(
        h.v2(Method::GET, "/organizations/acme/agents/")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only connected agents are listed: {list}"
    );
    assert_eq!(list[0]["connection_state"], "connected");
    let got = expect_json(
        h.v2(
            Method::GET,
            &format!("/organizations/acme/agents/{}", agent.id),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(got["name"], "test-agent");
    assert_eq!(
        h.v2(
            Method::PUT,
            &format!("/organizations/acme/agents/{}/pause", agent.id)
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    let ping = expect_json(
        h.v3(Method::GET, "/ping", &agent.session)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ping["action"], "pause");
    expect_error(
        h.v2(
            Method::PUT,
            &format!("/organizations/acme/agents/{}/pause", agent.id),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        h.v2(
            Method::PUT,
            &format!("/organizations/acme/agents/{}/resume", agent.id)
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        h.v2(
            Method::PUT,
            &format!("/organizations/acme/agents/{}/stop", agent.id)
        )
        .json(&json!({"force": false}))
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::NO_CONTENT
    );
    let message = expect_error(
        h.v2(
            Method::PUT,
            &format!("/organizations/acme/agents/{}/stop", agent.id),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(message.contains("connected"), "{message}");
    let response = h
        .v2(
            Method::GET,
            "/organizations/acme/agents/00000000-0000-0000-0000-000000000000",
        )
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::NOT_FOUND).await;
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
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["ratelimit-scope"], "rest");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = h
        .v2(Method::GET, "/organizations/acme/pipelines")
        .send()
        .await
        .unwrap();
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
    let page = expect_json(
        h.v2(Method::GET, &format!("{base}?per_page=2"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let next = page["links"]["next"].as_str().unwrap().to_string();
    assert!(page["links"]["self"].as_str().is_some());
    let rest = h
        .http
        .get(&next)
        .bearer_auth(h.emulator.api_token().expose())
        .send()
        .await
        .unwrap();
    let rest = expect_json(rest, StatusCode::OK).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["links"].get("next").is_none());
    let keyed = expect_json(
        h.v2(Method::GET, &format!("{base}?step_key=a&state[]=scheduled"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(keyed["items"].as_array().unwrap().len(), 1);
    let response = h
        .v2(Method::GET, &format!("{base}?after=nope"))
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::BAD_REQUEST).await;
}
