//! Lost agents (reference §3.6 `connection_state: lost` / `lost_at`, §6 `agent.lost` and
//! "Agent Lost"): an agent silent for `agents/lost-after` becomes `lost`, leaves the REST
//! agents list, is told to disconnect if it comes back, and the job it held is re-queued
//! (assigned) or failed with exit −1 (accepted / running).

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

async fn rest_agent(h: &Harness, id: &str) -> Value {
    h.rest_get(&format!("/organizations/acme/agents/{id}"))
        .await
}

async fn listed_agent_ids(h: &Harness) -> Vec<String> {
    let list = h.rest_get("/organizations/acme/agents").await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

async fn wait_until_lost(h: &Harness, agent: &Agent) -> Value {
    eventually("the silent agent to be lost", || async {
        rest_agent(h, &agent.id).await["connection_state"] == "lost"
    })
    .await;
    rest_agent(h, &agent.id).await
}

#[tokio::test]
async fn lost_after_defaults_to_three_heartbeats_and_rejects_bad_values() {
    let h = start().await;
    let shown = h.emu_get("/agents/lost-after").await;
    assert_eq!(shown["seconds"], 15.0, "3 × the 5 s heartbeat: {shown}");
    for bad in [json!({"seconds": 0}), json!({"seconds": -1.5})] {
        let message = h
            .emu(Method::PUT, "/agents/lost-after")
            .json(&bad)
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
            .await;
        assert!(message.contains("seconds"), "{message}");
    }
    let response = h
        .emu(Method::PUT, "/agents/lost-after")
        .json(&json!({"minutes": 1}))
        .sent()
        .await;
    assert!(response.status().is_client_error(), "unknown field refused");
    let set = h
        .emu(Method::PUT, "/agents/lost-after")
        .json(&json!({"seconds": 2.5}))
        .expect_json(StatusCode::OK)
        .await;
    assert_eq!(set["seconds"], 2.5);
}

#[tokio::test]
async fn a_silent_agent_is_lost_while_a_heartbeating_one_stays() {
    let h = start().await;
    // Long enough that a heartbeat every 100 ms keeps an agent alive on a loaded machine.
    h.emulator.set_agent_lost_after(Duration::from_secs(2));
    let silent = h.register(&[]).await;
    let alive = h.register(&[]).await;
    let heartbeats = {
        let request = h
            .v3(Method::POST, "/heartbeat", &alive.session)
            .json(&json!({"sent_at": "2026-01-01T00:00:00Z"}));
        tokio::spawn(async move {
            loop {
                if let Some(r) = request.try_clone() {
                    let _ = r.send().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let lost = wait_until_lost(&h, &silent).await;
    heartbeats.abort();
    assert!(lost["lost_at"].is_string(), "lost_at is set: {lost}");
    assert!(lost["disconnected_at"].is_null(), "{lost}");
    assert_eq!(
        rest_agent(&h, &alive.id).await["connection_state"],
        "connected"
    );
    let listed = listed_agent_ids(&h).await;
    assert_eq!(listed, vec![alive.id.clone()], "lost agents are not listed");

    // The lost agent comes back: it is told to go and cannot connect again.
    let ping = h.ping(&silent).await;
    assert_eq!(ping["action"], "disconnect");
    let message = h
        .v3(Method::POST, "/connect", &silent.session)
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY)
        .await;
    assert!(message.contains("lost"), "{message}");
    let response = h
        .v3(Method::POST, "/disconnect", &silent.session)
        .sent()
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        rest_agent(&h, &silent.id).await["connection_state"],
        "lost",
        "disconnecting after being lost changes nothing"
    );
}

#[tokio::test]
async fn the_running_job_of_a_lost_agent_fails_with_exit_minus_one() {
    let h = start().await;
    h.emulator.set_agent_lost_after(Duration::from_millis(200));
    let build = h.first_build("p", "steps:\n  - command: sleep 100\n").await;
    let jobs = script_jobs(&build);
    let agent = h.register(&[]).await;
    let job = h.acquire_ok(&agent, &jobs[0]).await;
    h.start_job(&job).await;
    wait_until_lost(&h, &agent).await;
    let timeline = h.timeline(&jobs[0]).await;
    assert_eq!(timeline["state"], "failed", "{timeline}");
    assert_eq!(timeline["exit_status"], -1);
    assert_eq!(timeline["signal_reason"], "agent_stop");
    let last = timeline["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["state"], "failed");
    assert_eq!(last["reason"], "agent lost");
    let build = h.get_build("p", build["number"].as_u64().unwrap()).await;
    assert_eq!(build["state"], "failed", "{build}");
    // The agent's late finish does not change the outcome.
    let message = expect_error(h.finish(&job, "0").await, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(message.contains("failed"), "{message}");
    h.assert_job_state(&jobs[0], "failed").await;
}

#[tokio::test]
async fn a_canceling_job_of_a_lost_agent_ends_canceled() {
    let h = start().await;
    let jobs = h.start_build("p", "steps:\n  - command: sleep 100\n").await;
    let agent = h.register(&[]).await;
    let job = h.acquire_ok(&agent, &jobs[0]).await;
    h.start_job(&job).await;
    h.emulator
        .cancel_job(jobs[0].parse().unwrap())
        .expect("cancel a running job");
    h.assert_job_state(&jobs[0], "canceling").await;
    h.emulator.set_agent_lost_after(Duration::from_millis(200));
    wait_until_lost(&h, &agent).await;
    let timeline = h.timeline(&jobs[0]).await;
    assert_eq!(timeline["state"], "canceled", "{timeline}");
    assert_eq!(timeline["exit_status"], -1);
}

#[tokio::test]
async fn an_assigned_job_of_a_lost_agent_goes_to_another_agent() {
    let h = start().await;
    h.emulator.set_agent_lost_after(Duration::from_millis(200));
    let jobs = h.start_build("p", "steps:\n  - command: make\n").await;
    let first = h.register(&[]).await;
    h.assert_dispatched(&first, &jobs[0]).await;
    h.assert_job_state(&jobs[0], "assigned").await;
    wait_until_lost(&h, &first).await;
    let timeline = h.timeline(&jobs[0]).await;
    assert_eq!(timeline["state"], "scheduled", "{timeline}");
    assert!(timeline["agent_id"].is_null(), "{timeline}");
    assert!(timeline["exit_status"].is_null(), "nothing ran: {timeline}");

    h.emulator.set_agent_lost_after(Duration::from_secs(60));
    let second = h.register(&[]).await;
    h.assert_dispatched(&second, &jobs[0]).await;
}

#[tokio::test]
async fn losing_an_agent_sends_the_webhook_and_the_eventbridge_event() {
    let h = start().await;
    let (hooks, bridge) = h.push_to_receivers("hook-token").await;
    h.emulator.set_agent_lost_after(Duration::from_millis(200));
    let agent = h.register(&[]).await;
    wait_until_lost(&h, &agent).await;
    let find = |received: &Received, key: &str, name: &str| {
        received
            .lock()
            .unwrap()
            .iter()
            .find(|(_, v, _)| v[key] == name)
            .map(|(_, v, _)| v.clone())
    };
    eventually("agent.lost webhook and Agent Lost event", || async {
        find(&hooks, "event", "agent.lost").is_some()
            && find(&bridge, "detail-type", "Agent Lost").is_some()
    })
    .await;
    let hook = find(&hooks, "event", "agent.lost").unwrap();
    assert_eq!(hook["agent"]["id"], agent.id.as_str());
    assert_eq!(hook["agent"]["connection_state"], "lost");
    assert!(hook["agent"]["lost_at"].is_string(), "{hook}");
    let event = find(&bridge, "detail-type", "Agent Lost").unwrap();
    let detail = &event["detail"]["agent"];
    assert_eq!(detail["uuid"], agent.id.as_str());
    assert_eq!(detail["connection_state"], "lost");
    let lost_at = detail["lost_at"].as_str().unwrap_or_default();
    assert!(
        lost_at.ends_with(" UTC"),
        "EventBridge time format: {event}"
    );
}
