//! Spot interruption warnings and rebalance recommendations, from the SQS queue an
//! EventBridge rule fills (`[ec2] notice_queue_url`). A notice naming one of the pools'
//! instances is written onto the instance as the `updraft:notice` tag, so it survives a
//! restart of the scheduler; the pool manager then drains that instance (its agents finish
//! their jobs and stop) and launches a replacement. Other messages are dropped.

use crate::errors::classify;
use crate::tags::{FLEET_TAG, NOTICE_TAG, POOL_TAG};
use aws_sdk_ec2::types::{Filter, Tag};
use serde::Deserialize;
use std::time::Duration;

/// How long to wait after the queue could not be read.
const RETRY_AFTER: Duration = Duration::from_secs(5);

pub const INTERRUPTION: &str = "EC2 Spot Instance Interruption Warning";
pub const REBALANCE: &str = "EC2 Instance Rebalance Recommendation";

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "detail-type")]
    detail_type: String,
    detail: Detail,
}

#[derive(Debug, Deserialize)]
struct Detail {
    #[serde(rename = "instance-id")]
    instance_id: String,
    #[serde(rename = "instance-action", default)]
    instance_action: Option<String>,
}

/// The instance a notice names and what it says, for an interruption or rebalance event.
pub(crate) fn parse(body: &str) -> Option<(String, String)> {
    let event: Event = serde_json::from_str(body).ok()?;
    let words = match event.detail_type.as_str() {
        INTERRUPTION => format!(
            "spot interruption warning ({})",
            event
                .detail
                .instance_action
                .as_deref()
                .unwrap_or("terminate")
        ),
        REBALANCE => "rebalance recommendation".to_string(),
        _ => return None,
    };
    Some((event.detail.instance_id, words))
}

/// What reading notices needs.
pub(crate) struct Notices {
    pub sqs: aws_sdk_sqs::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub queue_url: String,
    pub wait: Duration,
    pub prefix: String,
}

impl Notices {
    /// Read the queue until the task is dropped.
    pub async fn run(self) {
        loop {
            if let Err(error) = self.receive().await {
                tracing::warn!(%error, queue = %self.queue_url, "reading interruption notices failed; trying again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }

    async fn receive(&self) -> Result<(), updraft_backends::BackendError> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(self.wait.as_secs() as i32)
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", &e))?;
        for message in received.messages() {
            if let Some((instance, words)) = message.body().and_then(parse) {
                self.mark(&instance, &words).await?;
            }
            if let Some(handle) = message.receipt_handle() {
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| classify("DeleteMessage", &e))?;
            }
        }
        Ok(())
    }

    /// Tag the instance with the notice, if it is one of this scheduler's pool members.
    async fn mark(
        &self,
        instance: &str,
        words: &str,
    ) -> Result<(), updraft_backends::BackendError> {
        let tags = self
            .ec2
            .describe_tags()
            .filters(
                Filter::builder()
                    .name("resource-id")
                    .values(instance)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("DescribeTags", &e))?;
        let tag = |key: &str| {
            tags.tags()
                .iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value())
                .map(str::to_string)
        };
        if tag(POOL_TAG).as_deref() != Some(self.prefix.as_str()) {
            return Ok(());
        }
        self.ec2
            .create_tags()
            .resources(instance)
            .tags(Tag::builder().key(NOTICE_TAG).value(words).build())
            .send()
            .await
            .map_err(|e| classify("CreateTags", &e))?;
        tracing::warn!(
            instance,
            fleet = tag(FLEET_TAG).unwrap_or_default(),
            notice = words,
            "notice for a pool instance: draining it"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruption_and_rebalance_events_name_their_instance() {
        let interruption = r#"{"version":"0","detail-type":"EC2 Spot Instance Interruption Warning","source":"aws.ec2","detail":{"instance-id":"i-0abc","instance-action":"terminate"}}"#;
        assert_eq!(
            parse(interruption),
            Some((
                "i-0abc".into(),
                "spot interruption warning (terminate)".into()
            ))
        );
        let rebalance = r#"{"detail-type":"EC2 Instance Rebalance Recommendation","detail":{"instance-id":"i-0def"}}"#;
        assert_eq!(
            parse(rebalance),
            Some(("i-0def".into(), "rebalance recommendation".into()))
        );
        assert_eq!(
            parse(
                r#"{"detail-type":"EC2 Instance State-change Notification","detail":{"instance-id":"i-1"}}"#
            ),
            None
        );
        assert_eq!(parse("not json"), None);
    }
}
