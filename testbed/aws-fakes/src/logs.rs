//! Ships a process's output to CloudWatch Logs in moto the way the real services do: one event
//! per line stamped when the line was read, lines longer than an event may be split, batches
//! within PutLogEvents' limits, flushed every 150 ms so a reader following the stream from the
//! head sees output while the process still runs.

use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_cloudwatchlogs::Client as LogsClient;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// PutLogEvents counts each event as its UTF-8 message plus 26 bytes.
const EVENT_OVERHEAD: usize = 26;
/// Largest message of one event: 256 KiB less the per-event overhead.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 - EVENT_OVERHEAD;
const MAX_BATCH_BYTES: usize = 1_048_576;
const MAX_BATCH_EVENTS: usize = 10_000;
const FLUSH_EVERY: Duration = Duration::from_millis(150);
const PUT_ATTEMPTS: u32 = 3;
const READ_CHUNK: usize = 64 * 1024;

/// How lines become event messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineStyle {
    /// CodeBuild: each message keeps its line's `\n`, so concatenated messages are the output.
    KeepNewline,
    /// Docker's `awslogs` driver: the `\n` is dropped, and so are empty lines.
    StripNewline,
}

struct LogEvent {
    timestamp_ms: i64,
    message: String,
}

/// Where lines go. A writer for a disabled log goes nowhere.
#[derive(Clone)]
pub struct LogWriter {
    sender: Option<mpsc::Sender<LogEvent>>,
}

impl LogWriter {
    /// A writer that drops everything (logs disabled).
    pub fn discard() -> LogWriter {
        LogWriter { sender: None }
    }

    /// Sends one message as one event stamped now; a message over the event limit is split.
    pub async fn message(&self, message: &str) {
        let Some(sender) = &self.sender else {
            return;
        };
        let timestamp_ms = now_ms();
        for piece in split_at_char_boundaries(message, MAX_MESSAGE_BYTES) {
            let event = LogEvent {
                timestamp_ms,
                message: piece.to_owned(),
            };
            if sender.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// An open log stream and the task that flushes events into it.
pub struct LogStream {
    writer: LogWriter,
    flusher: JoinHandle<()>,
}

impl LogStream {
    /// Creates the stream (and the group first, when `create_group`), then starts flushing.
    /// Fails with the service's message, e.g. for a missing group.
    pub async fn open(
        client: LogsClient,
        group: &str,
        stream: &str,
        create_group: bool,
    ) -> Result<LogStream, String> {
        if create_group {
            let created = client.create_log_group().log_group_name(group).send().await;
            if let Err(error) = created {
                let error = error.into_service_error();
                if !error.is_resource_already_exists_exception() {
                    return Err(format!("CreateLogGroup {group}: {}", describe(&error)));
                }
            }
        }
        let created = client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await;
        if let Err(error) = created {
            let error = error.into_service_error();
            if !error.is_resource_already_exists_exception() {
                return Err(format!(
                    "CreateLogStream {group}/{stream}: {}",
                    describe(&error)
                ));
            }
        }
        let (sender, receiver) = mpsc::channel(4096);
        let flusher = tokio::spawn(flush_loop(
            client,
            group.to_owned(),
            stream.to_owned(),
            receiver,
        ));
        Ok(LogStream {
            writer: LogWriter {
                sender: Some(sender),
            },
            flusher,
        })
    }

    pub fn writer(&self) -> LogWriter {
        self.writer.clone()
    }

    /// Waits until every event sent through any writer of this stream is in the service.
    /// Every other writer clone must be dropped first.
    pub async fn close(self) {
        drop(self.writer);
        let _ = self.flusher.await;
    }
}

/// Reads `reader` to its end and writes its lines to `writer` in `style`.
pub async fn pump(mut reader: impl AsyncRead + Unpin, writer: LogWriter, style: LineStyle) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let mut rest = &chunk[..read];
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            pending.extend_from_slice(&rest[..=newline]);
            rest = &rest[newline + 1..];
            emit_line(&writer, &std::mem::take(&mut pending), style).await;
        }
        pending.extend_from_slice(rest);
        // A line longer than an event goes out in pieces as it grows, so memory stays bounded.
        while pending.len() > MAX_MESSAGE_BYTES {
            let cut = char_boundary_at_or_before(&pending, MAX_MESSAGE_BYTES);
            let piece: Vec<u8> = pending.drain(..cut).collect();
            writer.message(&String::from_utf8_lossy(&piece)).await;
        }
    }
    if !pending.is_empty() {
        emit_line(&writer, &pending, style).await;
    }
}

async fn emit_line(writer: &LogWriter, line: &[u8], style: LineStyle) {
    let text = String::from_utf8_lossy(line);
    match style {
        LineStyle::KeepNewline => writer.message(&text).await,
        LineStyle::StripNewline => {
            let stripped = text.strip_suffix('\n').unwrap_or(&text);
            if !stripped.is_empty() {
                writer.message(stripped).await;
            }
        }
    }
}

async fn flush_loop(
    client: LogsClient,
    group: String,
    stream: String,
    mut receiver: mpsc::Receiver<LogEvent>,
) {
    let mut batch = Batch::default();
    let mut deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            event = receiver.recv() => {
                let Some(event) = event else { break };
                if !batch.fits(&event) {
                    batch.put(&client, &group, &stream).await;
                    deadline = None;
                }
                if batch.events.is_empty() {
                    deadline = Some(Instant::now() + FLUSH_EVERY);
                }
                batch.push(event);
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                batch.put(&client, &group, &stream).await;
                deadline = None;
            }
        }
    }
    batch.put(&client, &group, &stream).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

#[derive(Default)]
struct Batch {
    events: Vec<InputLogEvent>,
    bytes: usize,
    last_timestamp_ms: i64,
}

impl Batch {
    fn fits(&self, event: &LogEvent) -> bool {
        self.events.len() < MAX_BATCH_EVENTS
            && self.bytes + event.message.len() + EVENT_OVERHEAD <= MAX_BATCH_BYTES
    }

    fn push(&mut self, event: LogEvent) {
        // Events in one call must be in chronological order, whatever the wall clock did.
        let timestamp_ms = event.timestamp_ms.max(self.last_timestamp_ms);
        self.last_timestamp_ms = timestamp_ms;
        self.bytes += event.message.len() + EVENT_OVERHEAD;
        self.events.push(
            InputLogEvent::builder()
                .timestamp(timestamp_ms)
                .message(event.message)
                .build()
                .expect("timestamp and message are set"),
        );
    }

    async fn put(&mut self, client: &LogsClient, group: &str, stream: &str) {
        if self.events.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.events);
        self.bytes = 0;
        for attempt in 1..=PUT_ATTEMPTS {
            let sent = client
                .put_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .set_log_events(Some(events.clone()))
                .send()
                .await;
            match sent {
                Ok(_) => return,
                Err(error) if attempt == PUT_ATTEMPTS => {
                    let error = error.into_service_error();
                    tracing::warn!(group, stream, events = events.len(), error = %describe(&error),
                        "PutLogEvents failed; these log events are lost");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await,
            }
        }
    }
}

fn describe(error: &impl aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata) -> String {
    format!(
        "{}: {}",
        error.code().unwrap_or("error"),
        error.message().unwrap_or("no message")
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The largest index ≤ `max` that does not fall inside a UTF-8 sequence.
fn char_boundary_at_or_before(bytes: &[u8], max: usize) -> usize {
    let mut cut = max.min(bytes.len());
    while cut > 0 && cut < bytes.len() && (bytes[cut] & 0b1100_0000) == 0b1000_0000 {
        cut -= 1;
    }
    if cut == 0 {
        max.min(bytes.len())
    } else {
        cut
    }
}

fn split_at_char_boundaries(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    pieces.push(rest);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_keeps_multibyte_characters_whole() {
        let text = "é".repeat(10);
        let pieces = split_at_char_boundaries(&text, 5);
        assert!(pieces.iter().all(|piece| piece.len() <= 5));
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn cut_points_avoid_continuation_bytes() {
        let bytes = "aé".as_bytes();
        assert_eq!(char_boundary_at_or_before(bytes, 2), 1);
        assert_eq!(char_boundary_at_or_before(bytes, 3), 3);
    }
}
