//! A job's log, kept as the chunks agents upload (reference §1.6.9) and put back together by
//! byte offset, so chunks arriving out of order or twice give the same text.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct JobLog {
    /// Uncompressed chunk bytes by their offset in the log.
    chunks: BTreeMap<u64, Vec<u8>>,
    /// Chunk uploads received, duplicates included.
    pub chunks_received: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk at offset {offset} was already received with different content ({existing} bytes, now {new} bytes)")]
    Conflict {
        offset: u64,
        existing: usize,
        new: usize,
    },
}

impl JobLog {
    /// Store a chunk. The same bytes at the same offset again are accepted and change nothing
    /// (an agent retrying an upload); different bytes at a known offset are refused.
    pub fn add(&mut self, offset: u64, data: Vec<u8>) -> Result<(), ChunkError> {
        self.chunks_received += 1;
        match self.chunks.get(&offset) {
            Some(existing) if *existing == data => Ok(()),
            Some(existing) => Err(ChunkError::Conflict {
                offset,
                existing: existing.len(),
                new: data.len(),
            }),
            None => {
                self.chunks.insert(offset, data);
                Ok(())
            }
        }
    }

    /// The log so far, in offset order; bytes covered twice by overlapping chunks appear once.
    pub fn content(&self) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::with_capacity(self.size());
        let mut end = 0u64;
        for (&offset, data) in &self.chunks {
            let chunk_end = offset + data.len() as u64;
            if chunk_end <= end {
                continue;
            }
            let skip = end.saturating_sub(offset) as usize;
            out.extend_from_slice(&data[skip..]);
            end = chunk_end;
        }
        out
    }

    pub fn size(&self) -> usize {
        self.chunks.values().map(Vec::len).sum()
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_and_duplicate_chunks_reassemble() {
        let mut log = JobLog::default();
        log.add(6, b"world\n".to_vec()).unwrap();
        log.add(0, b"hello ".to_vec()).unwrap();
        log.add(6, b"world\n".to_vec()).unwrap();
        assert_eq!(log.content(), b"hello world\n");
        assert_eq!(log.chunks_received, 3);
        assert!(log.add(0, b"HELLO!".to_vec()).is_err());
        assert_eq!(log.content(), b"hello world\n");
    }
}
