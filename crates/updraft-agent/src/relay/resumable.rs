//! Relaying output that can be read again, so a relay killed at any instant can be resumed by
//! a new process with no byte lost or sent twice.
//!
//! The output source owns its read position and records it durably; this module tells it
//! what to record. Before a chunk is uploaded the source hears [`ResumableOutput::uploading`]
//! (sequence, offset, length) and must record it before answering; after the server has it,
//! [`ResumableOutput::uploaded`] lets it record that the chunk's bytes are done. A relay
//! resumed after a crash between the two gets the chunk's length in [`Resume::pending`] and
//! sends exactly those bytes again under the same sequence and offset, which the server
//! accepts once (the same bytes at a known offset change nothing). The job is started once:
//! [`ResumableOutput::started`] records it. A finish the server refuses with 422 (the job is
//! no longer running, e.g. finished by this relay just before a crash) counts as done.
//!
//! The agent adds nothing of its own to such a log (no notices): every byte must come from
//! the source, so that a re-read reproduces it.

use crate::driver::{
    finish_fields, sleep_until_opt, watch_for_cancellation, CommandOutcome, DriveError,
    DriveOptions, JobReport, StopSwitch,
};
use crate::log_streamer::{gzip, LogStats};
use bytes::{Bytes, BytesMut};
use chrono::{SecondsFormat, Utc};
use reqwest::StatusCode;
use std::future::Future;
use tokio::time::Instant;
use updraft_buildkite::agent_api::{FinishRequest, JobClient, LogChunk};

/// Where the next chunk of a job's log goes: its sequence number (from 1) and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    pub sequence: u64,
    pub offset: u64,
}

impl LogPosition {
    /// An empty log.
    pub const START: LogPosition = LogPosition {
        sequence: 1,
        offset: 0,
    };
}

/// One chunk of the log: where it goes and how many (uncompressed) bytes it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMark {
    pub sequence: u64,
    pub offset: u64,
    pub len: u64,
}

/// How far an earlier relay of the same job got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The job was started already (it is not started again).
    pub started: bool,
    /// The next chunk's sequence and offset.
    pub next: LogPosition,
    /// The length of the chunk that was being uploaded at `next` and may or may not have
    /// arrived: it is sent again with exactly these bytes.
    pub pending: Option<u64>,
}

impl Resume {
    /// A job relayed for the first time.
    pub const FRESH: Resume = Resume {
        started: false,
        next: LogPosition::START,
        pending: None,
    };
}

/// Output the relay can ask for again from the end of the last chunk it uploaded.
///
/// `read` must be cancel-safe: the relay polls it alongside other work, and a read dropped
/// before it completes must lose nothing. Errors from the other methods stop the relay: a
/// position that cannot be recorded cannot be resumed exactly.
pub trait ResumableOutput: Send {
    /// The job has been started; record it so a resumed relay does not start it again.
    fn started(&mut self) -> impl Future<Output = Result<(), String>> + Send;
    /// More output, or `None` once all of it has been read (after the command ended).
    fn read(&mut self) -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
    /// `chunk` (the next `len` bytes after the last uploaded chunk) is about to be uploaded.
    fn uploading(&mut self, chunk: ChunkMark) -> impl Future<Output = Result<(), String>> + Send;
    /// The server has `chunk` (or gave up on it, counted as failed): its bytes are done.
    fn uploaded(&mut self, chunk: ChunkMark) -> impl Future<Output = Result<(), String>> + Send;
}

/// Start the job (unless `resume` says it was), relay `output` chunk by chunk while
/// `command` runs, watch for cancellation, and finish the job with the command's outcome.
pub(super) async fn drive<O, F>(
    client: &JobClient,
    options: &DriveOptions,
    mut output: O,
    resume: Resume,
    command: F,
    stop: &StopSwitch,
) -> Result<JobReport, DriveError>
where
    O: ResumableOutput,
    F: Future<Output = CommandOutcome>,
{
    let job_id = client.job_id().to_string();
    let progress = |detail: String| DriveError::Progress {
        job_id: job_id.clone(),
        detail,
    };
    if !resume.started {
        client.start().await.map_err(|source| DriveError::Start {
            job_id: job_id.clone(),
            source,
        })?;
        output.started().await.map_err(progress)?;
    }
    let mut relay = Relay {
        client,
        next: resume.next,
        pending: resume.pending,
        buffer: BytesMut::new(),
        chunk_max: options.chunk_max.max(1),
        flush_interval: options.flush_interval,
        log_max: options.log_max_bytes,
        stats: LogStats::default(),
        flush_at: None,
    };
    let watcher = watch_for_cancellation(client, options.status_poll_interval, stop);
    tokio::pin!(command, watcher);
    let mut outcome = None;
    let mut drain_deadline = None;
    let mut eof = false;
    loop {
        while let Some(len) = relay.due(eof).map_err(progress)? {
            relay.upload(&mut output, len).await.map_err(progress)?;
        }
        if eof && relay.buffer.is_empty() && outcome.is_some() {
            break;
        }
        let want = relay.pending.unwrap_or(relay.chunk_max as u64) as usize;
        tokio::select! {
            ended = &mut command, if outcome.is_none() => {
                outcome = Some(ended);
                drain_deadline = Some(Instant::now() + options.output_drain_timeout);
            }
            () = &mut watcher => {}
            read = output.read(), if !eof && relay.buffer.len() < want => match read {
                Ok(Some(data)) => relay.take(&data),
                Ok(None) => eof = true,
                Err(error) => {
                    tracing::warn!(job_id, %error, "the relayed output cannot be read further; the log ends here");
                    eof = true;
                }
            },
            () = sleep_until_opt(relay.flush_at), if !relay.buffer.is_empty() => relay.flush_at = Some(Instant::now()),
            () = sleep_until_opt(drain_deadline) => {
                if relay.pending.is_some() {
                    return Err(progress(format!(
                        "the output did not give back the {} bytes of chunk {} being uploaded when the relay last stopped",
                        relay.pending.unwrap_or_default(), relay.next.sequence
                    )));
                }
                tracing::warn!(job_id, "the relayed output was still open after the command ended; finishing without the rest");
                eof = true;
                relay.flush_at = Some(Instant::now());
            }
        }
    }
    let outcome = outcome.expect("the loop ends only once the command has ended");
    relay.stats.bytes = relay.next.offset;
    finish(client, options, outcome, relay.stats, stop).await
}

/// The relay's chunking state.
struct Relay<'a> {
    client: &'a JobClient,
    next: LogPosition,
    pending: Option<u64>,
    buffer: BytesMut,
    chunk_max: usize,
    /// Buffered bytes go out as a short chunk at most this long after they arrived.
    flush_interval: std::time::Duration,
    log_max: u64,
    stats: LogStats,
    /// When the buffered bytes are due to go out as a short chunk.
    flush_at: Option<Instant>,
}

impl Relay<'_> {
    /// Buffer `data`, dropping what lies past the job's log size limit.
    fn take(&mut self, data: &[u8]) {
        let kept = self.next.offset + self.buffer.len() as u64;
        let room = usize::try_from(self.log_max.saturating_sub(kept)).unwrap_or(usize::MAX);
        let keep = room.min(data.len());
        if keep < data.len() {
            self.stats.bytes_dropped += (data.len() - keep) as u64;
        }
        if keep > 0 && self.buffer.is_empty() && self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.flush_interval);
        }
        self.buffer.extend_from_slice(&data[..keep]);
    }

    /// The length of the next chunk to upload now, if one is due.
    fn due(&self, eof: bool) -> Result<Option<usize>, String> {
        let buffered = self.buffer.len();
        if let Some(pending) = self.pending {
            let pending = usize::try_from(pending).unwrap_or(usize::MAX);
            if buffered >= pending {
                return Ok(Some(pending));
            }
            if eof {
                return Err(format!(
                    "the output ended {} bytes short of chunk {} (being uploaded when the relay last stopped)",
                    pending - buffered,
                    self.next.sequence
                ));
            }
            return Ok(None);
        }
        let flush_due = self.flush_at.is_some_and(|at| at <= Instant::now());
        Ok(if buffered >= self.chunk_max {
            Some(self.chunk_max)
        } else if buffered > 0 && (eof || flush_due) {
            Some(buffered)
        } else {
            None
        })
    }

    /// Record, upload and record again one chunk of `len` bytes from the front of the buffer.
    async fn upload<O: ResumableOutput>(
        &mut self,
        output: &mut O,
        len: usize,
    ) -> Result<(), String> {
        let data: Bytes = self.buffer.split_to(len).freeze();
        let mark = ChunkMark {
            sequence: self.next.sequence,
            offset: self.next.offset,
            len: len as u64,
        };
        output.uploading(mark).await?;
        let compressed = {
            let data = data.clone();
            tokio::task::spawn_blocking(move || gzip(&data))
                .await
                .map_err(|error| format!("the log compressor crashed: {error}"))?
                .map_err(|error| format!("cannot compress chunk {}: {error}", mark.sequence))?
        };
        let chunk = LogChunk {
            sequence: mark.sequence,
            offset: mark.offset,
            size: mark.len,
            gzipped: compressed,
        };
        if let Err(error) = self.client.upload_chunk(&chunk).await {
            tracing::warn!(%error, sequence = mark.sequence, offset = mark.offset, "gave up uploading a log chunk");
            self.stats.chunks_failed += 1;
        }
        output.uploaded(mark).await?;
        self.stats.chunks += 1;
        self.next = LogPosition {
            sequence: mark.sequence + 1,
            offset: mark.offset + mark.len,
        };
        self.pending = None;
        self.flush_at = (!self.buffer.is_empty()).then(|| Instant::now() + self.flush_interval);
        Ok(())
    }
}

/// Finish the job; a 422 means it is no longer running (finished already, perhaps by this
/// relay just before it was stopped), which is what finishing wanted.
async fn finish(
    client: &JobClient,
    options: &DriveOptions,
    outcome: CommandOutcome,
    log: LogStats,
    stop: &StopSwitch,
) -> Result<JobReport, DriveError> {
    let job_id = client.job_id().to_string();
    let (exit_status, signal, signal_reason) = finish_fields(&outcome, stop.reason());
    let request = FinishRequest {
        exit_status: exit_status.clone(),
        signal: signal.clone(),
        signal_reason: signal_reason.clone(),
        finished_at: Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
        chunks_failed_count: log.chunks_failed,
        ignore_agent_in_dispatches: options.ignore_agent_in_dispatches.then_some(true),
    };
    let report = JobReport {
        job_id: job_id.clone(),
        exit_status,
        signal,
        signal_reason,
        log,
    };
    match client.finish(&request).await {
        Ok(()) => Ok(report),
        Err(source) if source.status() == Some(StatusCode::UNPROCESSABLE_ENTITY) => {
            tracing::info!(
                job_id,
                "the job was no longer running at finish; nothing to do"
            );
            Ok(report)
        }
        Err(source) => Err(DriveError::Finish {
            job_id,
            source,
            report: Box::new(report),
        }),
    }
}
