//! Push (reference §6): webhooks with token or signature, EventBridge envelopes, targets set
//! at runtime through `/_emulator/push`, seeded push faults; and API fault injection that
//! never changes state.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use updraft_emulator::{ApiFaults, PushFaults, PushTargets, WebhookAuth, WebhookTarget};
use updraft_model::Secret;

fn events(received: &Received) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v, _)| {
            v["event"]
                .as_str()
                .or(v["detail-type"].as_str())
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn webhooks_carry_the_token_and_job_events() {
    let h = start().await;
    let (url, received) = receiver().await;
    h.emulator.set_push_targets(PushTargets {
        webhook: Some(WebhookTarget {
            url,
            auth: WebhookAuth::Token(Secret::new("hook-token")),
        }),
        eventbridge_url: None,
    });
    let jobs = h.start_build("p", "steps:\n  - command: a\n").await;
    h.run_job(&jobs[0], "0").await;
    eventually("job.finished webhook", || async {
        events(&received).contains(&"job.finished".to_string())
    })
    .await;
    let all = events(&received);
    for name in [
        "build.scheduled",
        "job.scheduled",
        "build.running",
        "job.started",
        "job.finished",
        "build.finished",
    ] {
        assert!(all.contains(&name.to_string()), "missing {name} in {all:?}");
    }
    let got = received.lock().unwrap();
    let (headers, body, _) = got
        .iter()
        .find(|(_, v, _)| v["event"] == "job.scheduled")
        .unwrap();
    assert_eq!(headers["x-buildkite-token"], "hook-token");
    assert_eq!(headers["x-buildkite-event"], "job.scheduled");
    assert_eq!(body["job"]["id"], jobs[0].as_str());
    assert_eq!(body["job"]["agent_query_rules"], json!([]));
    assert_eq!(body["pipeline"]["slug"], "p");
    assert!(body["sender"]["name"].as_str().is_some());
}

#[tokio::test]
async fn signed_webhooks_verify_with_hmac_and_eventbridge_is_shaped() {
    let h = start().await;
    let (hook_url, hooks) = receiver().await;
    let (eb_url, bridge) = receiver().await;
    let shown = h.emu(Method::PUT, "/push").json(&json!({"webhook_url": hook_url, "webhook_secret": "s3cret", "eventbridge_url": eb_url})).expect_json(StatusCode::OK).await;
    assert_eq!(shown["webhook_auth"], "signature");
    assert!(
        !shown.to_string().contains("s3cret"),
        "secrets are never echoed: {shown}"
    );
    h.create_pipeline("p", "steps:\n  - command: a\n    agents: {queue: linux}\n")
        .await;
    h.create_build("p").await;
    eventually("signed webhook and EventBridge event", || async {
        events(&hooks).contains(&"job.scheduled".to_string())
            && events(&bridge).contains(&"Job Scheduled".to_string())
    })
    .await;
    let got = hooks.lock().unwrap();
    let (headers, _, raw) = got
        .iter()
        .find(|(_, v, _)| v["event"] == "job.scheduled")
        .unwrap();
    let header = headers["x-buildkite-signature"].to_str().unwrap();
    let timestamp: i64 = header
        .split(',')
        .next()
        .unwrap()
        .strip_prefix("timestamp=")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        header,
        updraft_emulator::signature_header("s3cret", timestamp, raw)
    );
    assert!(headers.get("x-buildkite-token").is_none());
    let bridge = bridge.lock().unwrap();
    let (_, envelope, _) = bridge
        .iter()
        .find(|(_, v, _)| v["detail-type"] == "Job Scheduled")
        .unwrap();
    assert_eq!(envelope["version"], "0");
    assert!(envelope["source"]
        .as_str()
        .unwrap()
        .starts_with("aws.partner/buildkite.com/acme/"));
    assert_eq!(
        envelope["detail"]["job"]["agent_query_rules"],
        json!(["queue=linux"])
    );
    assert_eq!(envelope["detail"]["job"]["state"], "scheduled");
    assert!(envelope["detail"]["job"]["runnable_at"]
        .as_str()
        .unwrap()
        .ends_with(" UTC"));
    assert_eq!(envelope["detail"]["pipeline"]["slug"], "p");
    assert_eq!(envelope["detail"]["organization"]["slug"], "acme");
}

#[tokio::test]
async fn push_faults_drop_and_duplicate_by_seed() {
    let h = start().await;
    let (url, received) = receiver().await;
    h.emulator.set_push_targets(PushTargets {
        webhook: None,
        eventbridge_url: Some(url),
    });
    h.emulator.set_push_faults(PushFaults {
        drop_fraction: 1.0,
        ..Default::default()
    });
    h.create_pipeline("p", "steps:\n  - command: a\n").await;
    h.create_build("p").await;
    eventually("drops to be counted", || async {
        let counters = h
            .emu(Method::GET, "/counters")
            .sent()
            .await
            .json::<Value>()
            .await
            .unwrap();
        counters["push"]["dropped"].as_u64().unwrap() >= 2
    })
    .await;
    assert!(received.lock().unwrap().is_empty());
    h.emulator.set_push_faults(PushFaults {
        duplicate_fraction: 1.0,
        ..Default::default()
    });
    h.create_build("p").await;
    eventually("duplicated deliveries", || async {
        events(&received)
            .iter()
            .filter(|e| *e == "Job Scheduled")
            .count()
            == 2
    })
    .await;
    h.emu(Method::PUT, "/faults")
        .json(&json!({"push": {"drop": 1.5}}))
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
}

#[tokio::test]
async fn api_faults_answer_429_or_503_and_change_nothing() {
    let h = start().await;
    let jobs = h.start_build("p", "steps:\n  - command: a\n").await;
    let agent = h.register(&[]).await;
    h.emulator.set_api_faults(ApiFaults {
        fraction: 1.0,
        seed: 3,
    });
    for _ in 0..5 {
        let response = h.acquire(&agent, &jobs[0]).await;
        let status = response.status();
        assert!(
            status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
        assert!(response.headers().get("retry-after").is_some());
        expect_error(response, status).await;
    }
    h.assert_job_state(&jobs[0], "scheduled").await;
    assert_eq!(
        h.timeline(&jobs[0]).await["acquires"],
        0,
        "a faulted request never reaches the handler"
    );
    // REST and introspection are not faulted.
    h.v2(Method::GET, "/organizations/acme/pipelines")
        .expect_status(StatusCode::OK)
        .await;
    let response = h
        .emu(Method::PUT, "/faults")
        .json(&json!({"api": {"fraction": 0.2, "seed": 9}}))
        .sent()
        .await;
    assert_eq!(
        expect_json(response, StatusCode::OK).await["api"]["fraction"],
        0.2
    );
    let mut faulted = 0;
    for _ in 0..200 {
        let status = h
            .v3(Method::GET, "/ping", &agent.session)
            .sent()
            .await
            .status();
        if status != StatusCode::OK {
            faulted += 1;
        }
    }
    assert!(
        (15..=70).contains(&faulted),
        "about 20% of 200 requests faulted, got {faulted}"
    );
    let counters = h.emu_get("/counters").await;
    assert_eq!(
        counters["api_faults_injected"].as_u64().unwrap(),
        5 + faulted
    );
}

#[tokio::test]
async fn agent_events_are_pushed_as_webhooks_and_eventbridge() {
    let h = start().await;
    let (hooks, bridge) = h.push_to_receivers("t").await;
    let agent = h.register(&["queue=default"]).await;
    let response = h
        .v2(
            Method::PUT,
            &format!("/organizations/acme/agents/{}/stop", agent.id),
        )
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    h.v3(Method::POST, "/disconnect", &agent.session)
        .sent()
        .await;
    eventually("agent events", || async {
        events(&hooks).len() == 3 && events(&bridge).len() == 3
    })
    .await;
    let mut names = events(&hooks);
    names.sort();
    assert_eq!(
        names,
        vec!["agent.connected", "agent.stopped", "agent.stopping"],
        "deliveries may arrive in any order"
    );
    let mut kinds = events(&bridge);
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["Agent Connected", "Agent Stopped", "Agent Stopping"]
    );
    let got = hooks.lock().unwrap();
    let (_, connected, _) = got
        .iter()
        .find(|(_, v, _)| v["event"] == "agent.connected")
        .unwrap();
    assert_eq!(connected["agent"]["id"], agent.id.as_str());
    assert!(connected.get("build").is_none());
    let bridge = bridge.lock().unwrap();
    let (_, envelope, _) = bridge
        .iter()
        .find(|(_, v, _)| v["detail-type"] == "Agent Stopped")
        .unwrap();
    assert_eq!(envelope["detail"]["agent"]["uuid"], agent.id.as_str());
    assert_eq!(envelope["detail"]["agent"]["connection_state"], "stopped");
    assert_eq!(envelope["detail"]["organization"]["slug"], "acme");
}
