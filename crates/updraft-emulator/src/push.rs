//! Push delivery (reference §6): each state change becomes a webhook (`X-Buildkite-Token` or
//! `X-Buildkite-Signature`) and an EventBridge-shaped event, POSTed as JSON to the targets
//! set at the time. Seeded fault injection drops, duplicates or delays a fraction of them.

use crate::config::{WebhookAuth, WebhookTarget};
use crate::server::SharedApp;
use crate::store::Event;
use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::Sha256;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// One HTTP POST to make.
#[derive(Debug, Clone)]
struct Delivery {
    url: String,
    body: Vec<u8>,
    event: &'static str,
    webhook_auth: Option<WebhookAuth>,
}

/// `X-Buildkite-Signature` value: `timestamp=<unix>,signature=<hex HMAC-SHA256 of "timestamp.body">`.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "timestamp={timestamp},signature={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// EventBridge detail-type for a webhook event name.
fn detail_type(event: &Event) -> Option<&'static str> {
    Some(match event.name {
        "job.scheduled" => "Job Scheduled",
        "job.started" => "Job Started",
        "job.finished" => "Job Finished",
        "build.scheduled" => "Build Created",
        "build.running" => "Build Started",
        "build.failing" => "Build Failing",
        "build.finished" if event.build["state"] == "blocked" => "Build Blocked",
        "build.finished" => "Build Finished",
        "agent.connected" => "Agent Connected",
        "agent.disconnected" => "Agent Disconnected",
        "agent.stopping" => "Agent Stopping",
        "agent.stopped" => "Agent Stopped",
        "agent.lost" => "Agent Lost",
        _ => return None,
    })
}

/// EventBridge times look like `2026-01-02 03:04:05 UTC`, not ISO 8601.
fn eb_time(value: &Value) -> Value {
    value
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(Value::Null, |t| {
            Value::String(
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string(),
            )
        })
}

fn eventbridge_detail(event: &Event, org: &str, org_id: &Value) -> Value {
    let b = &event.build;
    let p = &event.pipeline;
    let mut detail = Map::new();
    detail.insert("version".into(), json!(1));
    if let Some(j) = &event.job {
        let state = if event.name == "job.finished" {
            json!("finished")
        } else {
            j["state"].clone()
        };
        detail.insert(
            "job".into(),
            json!({
                "uuid": j["id"], "graphql_id": j["graphql_id"], "type": j["type"], "label": j["label"],
                "step_key": j["step_key"], "command": j["command"], "agent_query_rules": j["agent_query_rules"],
                "exit_status": j["exit_status"], "signal_reason": j["signal_reason"], "passed": j["state"] == "passed",
                "soft_failed": false, "state": state, "broken_reason": j["broken_reason"],
                "runnable_at": eb_time(&j["runnable_at"]), "started_at": eb_time(&j["started_at"]),
                "finished_at": eb_time(&j["finished_at"]), "unblocked_by": j["unblocked_by"],
                "retried_in_job_id": j["retried_in_job_id"],
            }),
        );
    }
    if let Some(a) = &event.agent {
        detail.insert(
            "agent".into(),
            json!({
                "uuid": a["id"], "graphql_id": a["graphql_id"], "connection_state": a["connection_state"],
                "name": a["name"], "version": a["version"], "ip_address": a["ip_address"], "hostname": a["hostname"],
                "pid": null, "priority": a["priority"], "meta_data": a["meta_data"],
                "connected_at": eb_time(&a["connected_at"]), "disconnected_at": eb_time(&a["disconnected_at"]),
                "lost_at": eb_time(&a["lost_at"]),
            }),
        );
    }
    if event.build.is_null() {
        detail.insert(
            "organization".into(),
            json!({"uuid": org_id, "graphql_id": null, "slug": org}),
        );
        return Value::Object(detail);
    }
    detail.insert(
        "build".into(),
        json!({
            "uuid": b["id"], "graphql_id": b["graphql_id"], "number": b["number"], "commit": b["commit"],
            "message": b["message"], "branch": b["branch"], "state": b["state"], "blocked_state": null,
            "source": b["source"], "started_at": eb_time(&b["started_at"]), "failing_at": null,
            "finished_at": eb_time(&b["finished_at"]), "meta_data": b["meta_data"],
        }),
    );
    detail.insert("pipeline".into(), json!({"uuid": p["id"], "graphql_id": p["graphql_id"], "slug": p["slug"], "repo": p["repository"]}));
    detail.insert(
        "organization".into(),
        json!({"uuid": org_id, "graphql_id": null, "slug": org}),
    );
    Value::Object(detail)
}

fn deliveries(app: &SharedApp, event: &Event) -> Vec<Delivery> {
    let targets = app.push_targets();
    let mut out = Vec::new();
    if let Some(WebhookTarget { url, auth }) = &targets.webhook {
        let mut body =
            json!({"event": event.name, "sender": {"id": Uuid::nil(), "name": "Updraft emulator"}});
        if !event.build.is_null() {
            body["build"] = event.build.clone();
            body["pipeline"] = event.pipeline.clone();
        }
        if let Some(job) = &event.job {
            body["job"] = job.clone();
        }
        if let Some(agent) = event.agent.as_ref().filter(|_| event.job.is_none()) {
            body["agent"] = agent.clone();
        }
        out.push(Delivery {
            url: url.clone(),
            body: body.to_string().into_bytes(),
            event: event.name,
            webhook_auth: Some(auth.clone()),
        });
    }
    if let (Some(url), Some(kind)) = (&targets.eventbridge_url, detail_type(event)) {
        let org_id = app.store.read(|s| json!(s.settings.org_id));
        let envelope = json!({
            "version": "0",
            "id": Uuid::new_v4(),
            "detail-type": kind,
            "source": format!("aws.partner/buildkite.com/{}/{}", app.org, org_id.as_str().unwrap_or_default()),
            "account": "000000000000",
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": "us-east-1",
            "resources": [],
            "detail": eventbridge_detail(event, &app.org, &org_id),
        });
        out.push(Delivery {
            url: url.clone(),
            body: envelope.to_string().into_bytes(),
            event: event.name,
            webhook_auth: None,
        });
    }
    out
}

async fn send(app: SharedApp, client: reqwest::Client, delivery: Delivery) {
    let mut request = client
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header("user-agent", "Buildkite-Request (updraft-emulator)");
    if let Some(auth) = &delivery.webhook_auth {
        request = request.header("x-buildkite-event", delivery.event);
        request = match auth {
            WebhookAuth::Token(token) => request.header("x-buildkite-token", token.expose()),
            WebhookAuth::Signature(secret) => request.header(
                "x-buildkite-signature",
                signature_header(
                    secret.expose(),
                    chrono::Utc::now().timestamp(),
                    &delivery.body,
                ),
            ),
        };
    }
    let ok = match request.body(delivery.body).send().await {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            tracing::debug!(url = %delivery.url, status = %response.status(), "push target refused an event");
            false
        }
        Err(error) => {
            tracing::debug!(url = %delivery.url, %error, "push delivery failed");
            false
        }
    };
    app.store.with(|s| {
        if ok {
            s.counters.push_sent += 1
        } else {
            s.counters.push_failed += 1
        }
    });
}

/// Deliver events until shutdown. Each delivery runs in its own task, so a slow receiver
/// delays nobody else (webhooks carry no ordering promise).
pub async fn run_push(
    app: SharedApp,
    mut events: mpsc::UnboundedReceiver<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the HTTP client for push delivery; webhooks and EventBridge are off");
            return;
        }
    };
    loop {
        let event = tokio::select! {
            event = events.recv() => match event { Some(e) => e, None => return },
            _ = shutdown.changed() => return,
        };
        for delivery in deliveries(&app, &event) {
            let (drop, duplicate, delay, delay_by) = {
                let mut guard = app
                    .live
                    .push_faults
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let (faults, dice) = &mut *guard;
                (
                    dice.roll(faults.drop_fraction),
                    dice.roll(faults.duplicate_fraction),
                    dice.roll(faults.delay_fraction),
                    faults.delay,
                )
            };
            if drop {
                app.store.with(|s| s.counters.push_dropped += 1);
                continue;
            }
            let copies = if duplicate { 2 } else { 1 };
            app.store.with(|s| {
                s.counters.push_duplicated += u64::from(duplicate);
                s.counters.push_delayed += u64::from(delay);
            });
            for _ in 0..copies {
                let (app, client, delivery) = (app.clone(), client.clone(), delivery.clone());
                tokio::spawn(async move {
                    if delay {
                        tokio::time::sleep(delay_by).await;
                    }
                    send(app, client, delivery).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        let header = signature_header("secret", 1700000000, b"{}");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000.{}");
        assert_eq!(
            header,
            format!(
                "timestamp=1700000000,signature={}",
                hex::encode(mac.finalize().into_bytes())
            )
        );
    }

    #[test]
    fn eventbridge_times_use_the_utc_suffix() {
        assert_eq!(
            eb_time(&json!("2026-01-02T03:04:05.123Z")),
            json!("2026-01-02 03:04:05 UTC")
        );
        assert_eq!(eb_time(&Value::Null), Value::Null);
    }
}
