//! Turns a job's output bytes into log chunks (reference §1.6.9): cut at most
//! `chunk_max` uncompressed bytes each, numbered from sequence 1 with their byte offset,
//! gzipped and uploaded by a few concurrent workers, each chunk retried on its own. The queue
//! between the writer and the workers is bounded, so a command that writes faster than the
//! server accepts is slowed down instead of filling memory. Output past the job's
//! `log_max_size_bytes` is accepted and dropped (so the command is never blocked on its
//! output), and one line in the log says where it was cut.

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::sync::Arc;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use updraft_buildkite::agent_api::{JobClient, LogChunk};

/// What happened to a job's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Uncompressed bytes handed to the streamer.
    pub bytes: u64,
    pub chunks: u64,
    /// Chunks given up on after their retries (reported at finish as `chunks_failed_count`).
    pub chunks_failed: u64,
    /// Output bytes dropped because the log reached its size limit.
    pub bytes_dropped: u64,
}

struct PendingChunk {
    sequence: u64,
    offset: u64,
    data: Bytes,
}

pub struct LogStreamer {
    buffer: Vec<u8>,
    chunk_max: usize,
    next_offset: u64,
    next_sequence: u64,
    queue: mpsc::Sender<PendingChunk>,
    workers: Vec<JoinHandle<u64>>,
    /// Output bytes kept at most; the truncation notice comes on top.
    max_output: u64,
    output_kept: u64,
    bytes_dropped: u64,
    /// Whether the last flushed chunk ended a line, so the notice starts on a line of its own.
    last_flushed_newline: bool,
}

impl LogStreamer {
    /// `chunk_max` must be > 0 (the server's `chunks_max_size_bytes`, possibly lowered);
    /// output past `max_output` bytes is dropped.
    pub fn new(client: JobClient, chunk_max: usize, workers: usize, max_output: u64) -> Self {
        let workers = workers.max(1);
        let (queue, receiver) = mpsc::channel::<PendingChunk>(workers);
        let receiver = Arc::new(Mutex::new(receiver));
        let workers = (0..workers)
            .map(|_| tokio::spawn(upload_worker(client.clone(), receiver.clone())))
            .collect();
        LogStreamer {
            buffer: Vec::with_capacity(chunk_max.min(64 * 1024)),
            chunk_max: chunk_max.max(1),
            next_offset: 0,
            next_sequence: 1,
            queue,
            workers,
            max_output,
            output_kept: 0,
            bytes_dropped: 0,
            last_flushed_newline: true,
        }
    }

    /// Append the command's output up to the size limit; the first time the limit cuts it,
    /// a notice saying so is appended instead and everything after it is dropped.
    pub async fn write(&mut self, data: &[u8]) {
        if self.bytes_dropped > 0 {
            self.bytes_dropped += data.len() as u64;
            return;
        }
        let room = self.max_output - self.output_kept;
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        self.append(&data[..keep]).await;
        self.output_kept += keep as u64;
        if keep < data.len() {
            self.bytes_dropped = (data.len() - keep) as u64;
            tracing::warn!(
                limit = self.max_output,
                "the job's output reached the log size limit; dropping the rest"
            );
            let newline = if self.last_byte_is_newline() {
                ""
            } else {
                "\n"
            };
            let notice = format!(
                "{newline}updraft agent: the output was truncated at {} bytes (the job's log_max_size_bytes); the rest was not uploaded\n",
                self.max_output
            );
            self.append(notice.as_bytes()).await;
        }
    }

    /// Append a message from the agent itself, which the size limit does not cut.
    pub async fn write_notice(&mut self, text: &str) {
        self.append(text.as_bytes()).await;
    }

    fn last_byte_is_newline(&self) -> bool {
        match self.buffer.last() {
            Some(byte) => *byte == b'\n',
            None => self.last_flushed_newline,
        }
    }

    /// Every full chunk is queued (waiting for room in the queue).
    async fn append(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.chunk_max - self.buffer.len();
            let take = room.min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == self.chunk_max {
                self.flush().await;
            }
        }
    }

    /// Queue whatever is buffered as a (possibly short) chunk.
    pub async fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        self.last_flushed_newline = self.buffer.last() == Some(&b'\n');
        let data = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(self.chunk_max.min(64 * 1024)),
        ));
        let chunk = PendingChunk {
            sequence: self.next_sequence,
            offset: self.next_offset,
            data,
        };
        self.next_sequence += 1;
        self.next_offset += chunk.data.len() as u64;
        if self.queue.send(chunk).await.is_err() {
            tracing::error!(
                "log upload workers stopped early; the rest of this log cannot be sent"
            );
        }
    }

    pub fn bytes_written(&self) -> u64 {
        self.next_offset + self.buffer.len() as u64
    }

    /// Flush, wait for every upload to end, and report.
    pub async fn finish(mut self) -> LogStats {
        self.flush().await;
        let chunks = self.next_sequence - 1;
        let bytes = self.next_offset;
        drop(self.queue);
        let mut chunks_failed = 0;
        for worker in self.workers {
            chunks_failed += worker.await.unwrap_or_else(|error| {
                tracing::error!(%error, "a log upload worker crashed");
                0
            });
        }
        LogStats {
            bytes,
            chunks,
            chunks_failed,
            bytes_dropped: self.bytes_dropped,
        }
    }
}

/// Uploads chunks until the queue closes; returns how many it gave up on.
async fn upload_worker(
    client: JobClient,
    receiver: Arc<Mutex<mpsc::Receiver<PendingChunk>>>,
) -> u64 {
    let mut failed = 0;
    loop {
        let next = receiver.lock().await.recv().await;
        let Some(pending) = next else { return failed };
        let size = pending.data.len() as u64;
        let data = pending.data;
        let gzipped = match tokio::task::spawn_blocking(move || gzip(&data)).await {
            Ok(Ok(gzipped)) => gzipped,
            Ok(Err(error)) => {
                tracing::error!(%error, sequence = pending.sequence, "could not compress a log chunk");
                failed += 1;
                continue;
            }
            Err(error) => {
                tracing::error!(%error, sequence = pending.sequence, "the log compressor crashed");
                failed += 1;
                continue;
            }
        };
        let chunk = LogChunk {
            sequence: pending.sequence,
            offset: pending.offset,
            size,
            gzipped,
        };
        if let Err(error) = client.upload_chunk(&chunk).await {
            tracing::warn!(%error, sequence = chunk.sequence, offset = chunk.offset, "gave up uploading a log chunk");
            failed += 1;
        }
    }
}

/// Fast compression: the log's bottleneck is CPU, and the wire is loopback or a LAN.
pub fn gzip(data: &[u8]) -> std::io::Result<Bytes> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::fast());
    encoder.write_all(data)?;
    Ok(Bytes::from(encoder.finish()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    #[test]
    fn gzip_round_trips() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut out = Vec::new();
        GzDecoder::new(&gzip(&data).unwrap()[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }
}
