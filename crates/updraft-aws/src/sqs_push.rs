//! Push through SQS: an EventBridge rule on the Buildkite partner bus sends "Job Scheduled"
//! events to a queue, and this loop long-polls it, so Updraft needs no inbound endpoint.
//!
//! Each message's body (the EventBridge envelope) is parsed with
//! `updraft_buildkite::events::parse_eventbridge` and handed to a sink (the scheduler's
//! intake), which resolves once it has durably handled the job. Only then is the message
//! deleted; while the sink works, the message's visibility is extended so no other receiver
//! gets it. A process that dies mid-message deletes nothing: the message comes back after
//! its visibility timeout and the sink, finding the job known, says so. A message the sink
//! cannot take now (this replica does not lead) is made visible again at once. A body that
//! is not an EventBridge event is left alone for the queue's redrive policy (a dead-letter
//! queue) to set aside.

use crate::errors::{classify, AwsError, ErrorClass};
use crate::metrics::{AwsMetrics, PushMessage};
use crate::settings::SqsPushSettings;
use aws_sdk_sqs::types::Message;
use futures::future::BoxFuture;
use std::future::Future;
use std::time::Duration;
use updraft_buildkite::events::{parse_eventbridge, PushEvent};

/// What the sink did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// The job is recorded: it will be launched even if this process dies now.
    Recorded,
    /// Already known (another delivery, or a poll found it first).
    Duplicate,
    /// No fleet serves it, or it was gone, or the event is not about a scheduled job.
    Settled(&'static str),
    /// Not now (e.g. this replica does not lead): another receiver should have it.
    Later,
}

impl Handled {
    fn label(&self) -> &'static str {
        match self {
            Handled::Recorded => "recorded",
            Handled::Duplicate => "duplicate",
            Handled::Settled(why) => why,
            Handled::Later => "later",
        }
    }
}

/// The intake a message's event goes to.
pub type Sink<'a> = dyn Fn(PushEvent) -> BoxFuture<'a, Handled> + Send + Sync + 'a;

/// Longest wait before receiving again after SQS refused a receive.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct SqsPush {
    client: aws_sdk_sqs::Client,
    settings: SqsPushSettings,
    metrics: AwsMetrics,
}

impl SqsPush {
    pub fn new(
        client: aws_sdk_sqs::Client,
        settings: SqsPushSettings,
        metrics: AwsMetrics,
    ) -> SqsPush {
        SqsPush {
            client,
            settings,
            metrics,
        }
    }

    /// Receive and hand over messages until `shutdown` resolves. Returns early only when
    /// the queue cannot be used at all (it does not exist, no permission).
    pub async fn run(
        &self,
        sink: &Sink<'_>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AwsError> {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        loop {
            let received = tokio::select! {
                received = self.receive() => received,
                () = &mut shutdown => return Ok(()),
            };
            match received {
                Ok(messages) => {
                    backoff = Duration::from_millis(200);
                    let handled = messages.iter().map(|message| self.handle(sink, message));
                    tokio::select! {
                        _ = futures::future::join_all(handled) => {}
                        () = &mut shutdown => return Ok(()),
                    }
                }
                Err(error) if error.class == ErrorClass::Fatal || error.is_not_found() => {
                    return Err(error)
                }
                Err(error) => {
                    self.metrics.failed("sqs", &error);
                    tracing::warn!(%error, "receiving from the push queue failed; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn receive(&self) -> Result<Vec<Message>, AwsError> {
        let answer = self
            .client
            .receive_message()
            .queue_url(&self.settings.queue_url)
            .max_number_of_messages(self.settings.batch as i32)
            .wait_time_seconds(self.settings.wait.get().as_secs() as i32)
            .visibility_timeout(self.visibility_secs())
            .send()
            .await
            .map_err(|error| classify("ReceiveMessage", &error))?;
        Ok(answer.messages().to_vec())
    }

    fn visibility_secs(&self) -> i32 {
        self.settings.visibility_timeout.get().as_secs().max(1) as i32
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .push_messages
            .get_or_create(&PushMessage { result })
            .inc();
    }

    /// Hand one message to the sink, keeping it invisible meanwhile, and settle it.
    async fn handle(&self, sink: &Sink<'_>, message: &Message) {
        let Some(receipt) = message.receipt_handle() else {
            return;
        };
        let event = match parse_eventbridge(message.body().unwrap_or_default().as_bytes()) {
            Ok(event) => event,
            Err(rejection) => {
                self.count("unreadable");
                tracing::warn!(message = message.message_id().unwrap_or_default(), %rejection, "a push queue message is not an EventBridge event; leaving it to the queue's redrive policy");
                return;
            }
        };
        let handled = sink(event);
        tokio::pin!(handled);
        let extend_every = Duration::from_secs((self.visibility_secs() as u64 / 2).max(1));
        let handled = loop {
            tokio::select! {
                handled = &mut handled => break handled,
                () = tokio::time::sleep(extend_every) => self.set_visibility(receipt, self.visibility_secs()).await,
            }
        };
        self.count(handled.label());
        match handled {
            Handled::Later => self.set_visibility(receipt, 0).await,
            _ => {
                if let Err(error) = self
                    .client
                    .delete_message()
                    .queue_url(&self.settings.queue_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                {
                    let error = classify("DeleteMessage", &error);
                    self.metrics.failed("sqs", &error);
                    tracing::warn!(%error, "cannot delete a handled push message; it will come back and be found known");
                }
            }
        }
    }

    async fn set_visibility(&self, receipt: &str, seconds: i32) {
        if let Err(error) = self
            .client
            .change_message_visibility()
            .queue_url(&self.settings.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .send()
            .await
        {
            let error = classify("ChangeMessageVisibility", &error);
            self.metrics.failed("sqs", &error);
            tracing::warn!(%error, "cannot change a push message's visibility");
        }
    }
}
