//! The resumable relay: output that can be read again from a recorded position, relayed by a
//! relay that stops at the worst moments (after a chunk's upload, before it was recorded as
//! done) and is resumed by a new one from what was recorded. The job's log must come out
//! byte-identical, the job started once and finished once with the command's exit status.

mod common;

use bytes::Bytes;
use common::{acquire, build, emulator, pipeline};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use updraft_agent::relay::{ChunkMark, LogPosition, ResumableOutput, Resume};
use updraft_agent::{CommandOutcome, DriveError, RelayExecutor};
use updraft_emulator::JobState;

/// What a durable store would hold for the relay.
#[derive(Debug, Clone, Default)]
struct Recorded {
    started: bool,
    /// Bytes of the output covered by uploaded chunks, and the next chunk's place.
    committed: u64,
    next: Option<LogPosition>,
    pending: Option<u64>,
}

/// The whole output in memory, read in pieces of `piece` bytes from the committed position;
/// it refuses to record the upload numbered `fail_after` (as if the process died right after
/// the server took the chunk).
struct Source {
    data: Arc<Vec<u8>>,
    read: u64,
    piece: usize,
    store: Arc<Mutex<Recorded>>,
    fail_after: Option<u64>,
}

impl Source {
    fn new(data: Arc<Vec<u8>>, store: Arc<Mutex<Recorded>>, fail_after: Option<u64>) -> Source {
        let read = store.lock().unwrap().committed;
        Source {
            data,
            read,
            piece: 7_777,
            store,
            fail_after,
        }
    }
}

impl ResumableOutput for Source {
    async fn started(&mut self) -> Result<(), String> {
        self.store.lock().unwrap().started = true;
        Ok(())
    }

    async fn read(&mut self) -> Result<Option<Bytes>, String> {
        let start = self.read as usize;
        if start >= self.data.len() {
            return Ok(None);
        }
        let end = (start + self.piece).min(self.data.len());
        self.read = end as u64;
        Ok(Some(Bytes::copy_from_slice(&self.data[start..end])))
    }

    async fn uploading(&mut self, chunk: ChunkMark) -> Result<(), String> {
        self.store.lock().unwrap().pending = Some(chunk.len);
        Ok(())
    }

    async fn uploaded(&mut self, chunk: ChunkMark) -> Result<(), String> {
        if Some(chunk.sequence) == self.fail_after {
            return Err("the process died here".into());
        }
        let mut store = self.store.lock().unwrap();
        store.committed = chunk.offset + chunk.len;
        store.pending = None;
        store.next = Some(LogPosition {
            sequence: chunk.sequence + 1,
            offset: chunk.offset + chunk.len,
        });
        Ok(())
    }
}

fn resume_from(store: &Mutex<Recorded>) -> Resume {
    let store = store.lock().unwrap();
    Resume {
        started: store.started,
        next: store.next.unwrap_or(LogPosition::START),
        pending: store.pending,
    }
}

#[tokio::test]
async fn a_relay_stopped_between_upload_and_record_is_resumed_without_loss_or_repeats() {
    let emulator = emulator().await;
    pipeline(&emulator, "resume", &["run elsewhere"]);
    let job = build(&emulator, "resume")[0];
    let (client, acquired) = acquire(&emulator, job).await;
    let data: Arc<Vec<u8>> = Arc::new(
        (0..300_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect(),
    );
    let store = Arc::new(Mutex::new(Recorded::default()));

    for fail_after in [Some(2), Some(3), Some(5), None] {
        let mut executor = RelayExecutor::new(
            client.clone(),
            &acquired,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        executor.options_mut().chunk_max = 256 * 1024;
        let resume = resume_from(&store);
        let source = Source::new(data.clone(), store.clone(), fail_after);
        let result = executor
            .run_resumable(source, resume, async { CommandOutcome::Exited(3) })
            .await;
        match (fail_after, result) {
            (Some(_), Err(DriveError::Progress { .. })) => {
                assert_eq!(emulator.job_state(job), Some(JobState::Running));
            }
            (None, Ok(report)) => assert_eq!(report.exit_status, "3"),
            (when, other) => panic!("run failing after {when:?}: {other:?}"),
        }
    }

    assert_eq!(emulator.job_state(job), Some(JobState::Failed));
    let log = emulator.job_log(job).unwrap();
    assert_eq!(log.len(), data.len());
    assert!(log == *data, "the log differs from the output");
    let timeline = emulator.job_timeline(job).unwrap();
    let received = timeline["log_chunks_received"].as_u64().unwrap();
    let chunks = data.len().div_ceil(256 * 1024) as u64;
    assert_eq!(
        received,
        chunks + 3,
        "each interrupted upload is sent once more, nothing else"
    );
}

#[tokio::test]
async fn a_relay_resumed_after_it_finished_the_job_finds_nothing_left_to_do() {
    let emulator = emulator().await;
    pipeline(&emulator, "resume-finished", &["run elsewhere"]);
    let job = build(&emulator, "resume-finished")[0];
    let (client, acquired) = acquire(&emulator, job).await;
    let data = Arc::new(b"all of it\n".to_vec());
    let store = Arc::new(Mutex::new(Recorded::default()));
    for _ in 0..2 {
        let executor = RelayExecutor::new(
            client.clone(),
            &acquired,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let resume = resume_from(&store);
        let source = Source::new(data.clone(), store.clone(), None);
        let report = executor
            .run_resumable(source, resume, async { CommandOutcome::Exited(0) })
            .await
            .expect("finishing again is not an error");
        assert_eq!(report.exit_status, "0");
    }
    assert_eq!(emulator.job_state(job), Some(JobState::Passed));
    assert_eq!(emulator.job_log(job).unwrap(), *data);
}
