//! Push through SQS against moto: EventBridge "Job Scheduled" envelopes, 30 % of them
//! delivered twice, are taken in once each; a receiver that dies holding messages deletes
//! none, so they come back after their visibility timeout to the next one; a message whose
//! job takes longer than the visibility timeout to record is kept invisible meanwhile; only
//! handled messages are deleted.

use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use updraft_aws::metrics::AwsMetrics;
use updraft_aws::settings::{AwsSettings, SqsPushSettings};
use updraft_aws::sqs_push::{Handled, Sink, SqsPush};
use updraft_aws::AwsClients;
use updraft_aws_fakes::{sdk_config, Moto};
use updraft_buildkite::events::PushEvent;

fn envelope(job: &str) -> String {
    serde_json::json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Job Scheduled",
        "source": "aws.partner/buildkite.com/acme/1",
        "account": "123456789012",
        "time": "2026-11-28T05:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "version": 1,
            "job": {"uuid": job, "type": "script", "agent_query_rules": ["queue=default"], "state": "scheduled"},
            "build": {"uuid": uuid::Uuid::new_v4().to_string(), "number": 1},
            "pipeline": {"uuid": uuid::Uuid::new_v4().to_string(), "slug": "p"},
            "organization": {"uuid": uuid::Uuid::new_v4().to_string(), "slug": "acme"},
        }
    })
    .to_string()
}

/// A stand-in intake: records each job once; the first `slow` jobs take `delay` to record.
#[derive(Clone, Default)]
struct Intake {
    recorded: Arc<Mutex<BTreeMap<String, u32>>>,
    slow: Arc<Mutex<BTreeSet<String>>>,
}

impl Intake {
    fn sink(&self, delay: Duration) -> Box<Sink<'static>> {
        let intake = self.clone();
        Box::new(move |event: PushEvent| -> BoxFuture<'static, Handled> {
            let intake = intake.clone();
            Box::pin(async move {
                let job = event.job_id().unwrap_or_default().to_string();
                if intake.slow.lock().unwrap().remove(&job) {
                    tokio::time::sleep(delay).await;
                }
                let mut recorded = intake.recorded.lock().unwrap();
                let count = recorded.entry(job).or_default();
                *count += 1;
                if *count == 1 {
                    Handled::Recorded
                } else {
                    Handled::Duplicate
                }
            })
        })
    }
}

#[tokio::test]
async fn every_job_is_taken_in_once_through_duplicates_slow_recording_and_a_dead_receiver() {
    crate::support::install_crypto();
    let moto = Moto::start().await.expect("moto");
    let clients = AwsClients::new(sdk_config(moto.endpoint()), &AwsSettings::default());
    let sqs = clients.sqs();
    let queue = sqs
        .create_queue()
        .queue_name("updraft-jobs")
        .send()
        .await
        .unwrap();
    let queue_url = queue.queue_url().unwrap().to_string();
    let settings: SqsPushSettings = serde_json::from_value(serde_json::json!({
        "queue_url": queue_url, "wait": "1s", "visibility_timeout": "2s", "batch": 10,
    }))
    .unwrap();

    let jobs: Vec<String> = (0..60).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let mut sent = 0;
    let copies_of = |i: usize| if i % 10 < 3 { 2 } else { 1 };
    for (i, job) in jobs.iter().enumerate() {
        let copies = copies_of(i);
        for _ in 0..copies {
            sqs.send_message()
                .queue_url(&queue_url)
                .message_body(envelope(job))
                .send()
                .await
                .unwrap();
            sent += 1;
        }
    }
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body("not an event")
        .send()
        .await
        .unwrap();
    assert_eq!(sent, 78);

    let intake = Intake::default();
    // The first receiver dies while the jobs it took are still being recorded.
    let dying = SqsPush::new(sqs.clone(), settings.clone(), AwsMetrics::default());
    let hanging: Box<Sink<'static>> = Box::new(|_| Box::pin(std::future::pending()));
    let died = tokio::time::timeout(
        Duration::from_millis(1500),
        dying.run(&*hanging, std::future::pending()),
    )
    .await;
    assert!(died.is_err(), "the receiver was still running when it died");

    // Some jobs take longer than the visibility timeout to record.
    let slow: Vec<String> = jobs.iter().take(5).cloned().collect();
    {
        let mut marked = intake.slow.lock().unwrap();
        marked.clear();
        marked.extend(slow.iter().cloned());
    }
    let metrics = AwsMetrics::default();
    let receiver = SqsPush::new(sqs.clone(), settings, metrics.clone());
    let sink = intake.sink(Duration::from_secs(5));
    let done = intake.clone();
    let expected = jobs.clone();
    let all_in = async move {
        loop {
            if done.recorded.lock().unwrap().len() == expected.len() {
                // Let every duplicate come through and be deleted too.
                tokio::time::sleep(Duration::from_secs(3)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(crate::support::PATIENCE, receiver.run(&*sink, all_in))
        .await
        .expect("every job taken in")
        .expect("the queue works");

    let recorded = intake.recorded.lock().unwrap().clone();
    assert_eq!(recorded.len(), 60);
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(
            recorded[job],
            copies_of(i),
            "job {i} was handed over once per copy sent (slow ones were kept invisible while recorded)"
        );
    }
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(
            aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )
        .send()
        .await
        .unwrap();
    let left: u32 = attributes
        .attributes()
        .unwrap()
        .values()
        .map(|v| v.parse::<u32>().unwrap())
        .sum();
    assert_eq!(
        left, 1,
        "only the unreadable message is left (for the dead-letter queue)"
    );
    drop(moto);
}
