//! A build's or task's CloudWatch Logs stream as output a relay can read again from where
//! its last uploaded chunk ended.
//!
//! The stream is read from the head with `startFromHead` and `nextForwardToken`, one page per
//! call. A position is a token plus a number of bytes: "the output from the page this token
//! starts, minus its first N bytes". Events never change once written and a page read again
//! from the same token holds at least what it held before, so the bytes after a position are
//! the same whenever they are read: that is what lets a chunk be re-sent byte for byte after a
//! crash. Positions are recorded (in the backend's state file) only when a chunk is done; the
//! relay records the length of a chunk before uploading it.
//!
//! The output ends once the build or task has ended and a read after it (and after
//! `log_settle`, for CloudWatch's ingestion delay) finds nothing new; then, if the command
//! left no exit status of its own (a build that failed before or after it, a stop), a last
//! line says how the build ended. That line is derived from the ended build, so it too is the
//! same when read again.

use crate::backend::Shared;
use crate::errors::classify;
use crate::metrics;
use crate::platform::{LineStyle, Platform};
use aws_sdk_cloudwatchlogs::types::OutputLogEvent;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;
use updraft_agent::relay::{ChunkMark, ResumableOutput};
use updraft_agent::StopSwitch;
use updraft_backends::LaunchName;

/// Where reading stands after the last uploaded chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogProgress {
    pub token: Option<String>,
    pub skip: u64,
}

/// A page read but not wholly uploaded yet: the token it was read from and its length in
/// output bytes. The closing line counts as a last page that is never passed.
#[derive(Debug, Clone)]
struct Page {
    start: Option<String>,
    len: u64,
    closing: bool,
}

pub struct LogOutput<P: Platform> {
    shared: Arc<Shared<P>>,
    name: LaunchName,
    id: String,
    style: LineStyle,
    pages: VecDeque<Page>,
    /// The token the next read starts from (`None`: the head of the stream).
    cursor: Option<String>,
    /// Bytes of the first unpassed page (or, with none, of what follows `cursor`) already
    /// uploaded.
    committed_skip: u64,
    /// Bytes still to drop from what is read: those an earlier relay uploaded.
    to_skip: u64,
    /// When the end was first seen with nothing more to read.
    caught_up_at_end: Option<Instant>,
    done: bool,
    changes: watch::Receiver<u64>,
    stop: StopSwitch,
}

impl<P: Platform> LogOutput<P> {
    pub fn new(
        shared: Arc<Shared<P>>,
        name: LaunchName,
        id: String,
        progress: LogProgress,
        stop: StopSwitch,
    ) -> LogOutput<P> {
        let changes = shared.board.subscribe();
        let style = shared.platform.line_style();
        LogOutput {
            shared,
            name,
            id,
            style,
            pages: VecDeque::new(),
            cursor: progress.token,
            committed_skip: progress.skip,
            to_skip: progress.skip,
            caught_up_at_end: None,
            done: false,
            changes,
            stop,
        }
    }

    /// Take a page of `content` read from `start`, giving back what was not read before.
    fn take(&mut self, start: Option<String>, content: Vec<u8>, closing: bool) -> Option<Bytes> {
        self.pages.push_back(Page {
            start,
            len: content.len() as u64,
            closing,
        });
        let skip = usize::try_from(self.to_skip)
            .unwrap_or(usize::MAX)
            .min(content.len());
        self.to_skip -= skip as u64;
        (content.len() > skip).then(|| Bytes::copy_from_slice(&content[skip..]))
    }

    /// Wait for the board to change or `pause` to pass, whichever is first.
    async fn pause(&mut self, pause: std::time::Duration) {
        let _ = tokio::time::timeout(pause, self.changes.changed()).await;
    }

    /// The position after `len` more bytes are uploaded: the new position and how many
    /// pages it passes.
    fn advanced(&self, len: u64) -> (LogProgress, usize) {
        let mut skip = self.committed_skip + len;
        let mut passed = 0;
        for page in &self.pages {
            if page.closing || skip < page.len {
                break;
            }
            skip -= page.len;
            passed += 1;
        }
        let token = match self.pages.get(passed) {
            Some(page) => page.start.clone(),
            None => self.cursor.clone(),
        };
        (LogProgress { token, skip }, passed)
    }
}

/// The output bytes of a page of events.
fn content(events: &[OutputLogEvent], style: LineStyle) -> Vec<u8> {
    let mut out = Vec::new();
    for message in events.iter().filter_map(|e| e.message()) {
        match style {
            LineStyle::CodeBuild if is_container_line(message) => {}
            LineStyle::CodeBuild => out.extend_from_slice(message.as_bytes()),
            LineStyle::AwsLogs => {
                out.extend_from_slice(message.as_bytes());
                out.push(b'\n');
            }
        }
    }
    out
}

/// CodeBuild's own lines: `[Container] 2026/11/28 04:57:01.123456 Entering phase BUILD`.
fn is_container_line(message: &str) -> bool {
    let Some(rest) = message.strip_prefix("[Container] ") else {
        return false;
    };
    let stamp = rest.as_bytes();
    stamp.len() >= 20
        && stamp[..4].iter().all(u8::is_ascii_digit)
        && stamp[4] == b'/'
        && stamp[7] == b'/'
        && stamp[10] == b' '
        && stamp[13] == b':'
        && stamp[16] == b':'
}

impl<P: Platform> ResumableOutput for LogOutput<P> {
    async fn started(&mut self) -> Result<(), String> {
        let name = self.name.clone();
        self.shared
            .store
            .run(move |store| store.set_job_started(&name))
            .await
            .map_err(|e| e.to_string())
    }

    async fn read(&mut self) -> Result<Option<Bytes>, String> {
        let options = self.shared.options.clone();
        loop {
            if self.done {
                return Ok(None);
            }
            let observed = self.shared.board.get(&self.id);
            let ended = observed
                .as_ref()
                .filter(|o| o.outcome.is_some())
                .map(|o| o.epilogue.clone());
            let Some(location) = observed.and_then(|o| o.logs) else {
                if let Some(epilogue) = ended {
                    self.done = true;
                    let cursor = self.cursor.clone();
                    return Ok(epilogue.and_then(|text| self.take(cursor, text.into_bytes(), true)));
                }
                self.pause(options.log_poll_interval).await;
                continue;
            };
            let requested = self.cursor.clone();
            let answer = self
                .shared
                .logs
                .get_log_events()
                .log_group_name(&location.group)
                .log_stream_name(&location.stream)
                .start_from_head(true)
                .set_next_token(requested.clone())
                .send()
                .await;
            let page = match answer {
                Ok(page) => page,
                Err(error) => {
                    let error = classify("GetLogEvents", &error);
                    if !error.is_not_found() {
                        self.shared
                            .metrics
                            .failed(self.shared.platform.kind(), &error);
                        tracing::debug!(launch = %self.name, %error, "reading the log failed; trying again");
                    }
                    // A stream that never came to be (the build ended before it had one).
                    if error.is_not_found() && ended.is_some() {
                        self.done = true;
                        let cursor = self.cursor.clone();
                        let epilogue = ended.flatten();
                        return Ok(
                            epilogue.and_then(|text| self.take(cursor, text.into_bytes(), true))
                        );
                    }
                    self.pause(options.log_poll_interval).await;
                    continue;
                }
            };
            let next = page.next_forward_token().map(str::to_string);
            if page.events().is_empty() {
                if next.is_some() && self.pages.is_empty() && self.to_skip == 0 {
                    self.cursor = next;
                }
                if let Some(epilogue) = ended {
                    let since = *self.caught_up_at_end.get_or_insert_with(Instant::now);
                    if since.elapsed() >= options.log_settle || self.stop.reason().is_some() {
                        self.done = true;
                        let cursor = self.cursor.clone();
                        return Ok(
                            epilogue.and_then(|text| self.take(cursor, text.into_bytes(), true))
                        );
                    }
                    tokio::time::sleep(options.log_poll_interval.min(options.log_settle)).await;
                    continue;
                }
                self.pause(options.log_poll_interval).await;
                continue;
            }
            let bytes = content(page.events(), self.style);
            if next.is_some() {
                self.cursor = next;
            }
            if let Some(data) = self.take(requested, bytes, false) {
                return Ok(Some(data));
            }
        }
    }

    async fn uploading(&mut self, chunk: ChunkMark) -> Result<(), String> {
        let name = self.name.clone();
        self.shared
            .store
            .run(move |store| store.set_pending(&name, chunk.len))
            .await
            .map_err(|e| e.to_string())
    }

    async fn uploaded(&mut self, chunk: ChunkMark) -> Result<(), String> {
        let (progress, passed) = self.advanced(chunk.len);
        let (name, recorded) = (self.name.clone(), progress.clone());
        self.shared
            .store
            .run(move |store| {
                store.set_uploaded(
                    &name,
                    chunk.sequence + 1,
                    chunk.offset + chunk.len,
                    recorded.token.as_deref(),
                    recorded.skip,
                )
            })
            .await
            .map_err(|e| e.to_string())?;
        self.pages.drain(..passed);
        self.committed_skip = progress.skip;
        let backend = metrics::Backend {
            backend: self.shared.platform.kind(),
        };
        self.shared
            .metrics
            .relay_bytes
            .get_or_create(&backend)
            .inc_by(chunk.len);
        self.shared
            .metrics
            .relay_chunks
            .get_or_create(&backend)
            .inc();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(message: &str) -> OutputLogEvent {
        OutputLogEvent::builder()
            .message(message)
            .timestamp(1)
            .build()
    }

    #[test]
    fn codebuild_output_leaves_out_its_own_lines_and_awslogs_gets_its_newlines_back() {
        let events = [
            event("[Container] 2026/11/28 04:57:01.123456 Entering phase BUILD\n"),
            event("hello\n"),
            event("[Container] is what I print\n"),
            event("no newline"),
        ];
        assert_eq!(
            content(&events, LineStyle::CodeBuild),
            b"hello\n[Container] is what I print\nno newline"
        );
        assert_eq!(
            content(&[event("a"), event("b")], LineStyle::AwsLogs),
            b"a\nb\n"
        );
    }
}
