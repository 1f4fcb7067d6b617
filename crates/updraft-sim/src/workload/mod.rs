//! Workloads: the jobs a simulation serves. A sim trace is JSON Lines, one job per line —
//! `{"at_ms":0,"queue":"default","duration_ms":300000,"pipeline":"app","priority":0}`
//! (`pipeline` and `priority` optional) — gzipped when the file name ends in `.gz`. An
//! emulator build trace (`[{"at_ms":…,"pipeline":…}, …]`, the `trace` of
//! `POST /_emulator/workload`) becomes jobs through a pipelines file that says which jobs
//! each pipeline's build runs (`pipelines`). Generators make the reference shapes.

pub mod generate;
pub mod pipelines;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

/// One job: when it becomes runnable (ms after the workload's start), on which queue, and
/// how long it runs once an agent has it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobArrival {
    pub at_ms: u64,
    #[serde(default = "default_queue")]
    pub queue: String,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
}

fn default_queue() -> String {
    "default".into()
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Read a trace: sim JSON Lines (optionally gzipped), sorted by arrival on the way in.
pub fn read_jobs(path: &Path) -> Result<Vec<JobArrival>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    parse_jobs(BufReader::new(reader)).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parse JSON Lines of jobs; blank lines are skipped, errors name the line.
pub fn parse_jobs(reader: impl BufRead) -> Result<Vec<JobArrival>, String> {
    let mut jobs = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let job: JobArrival =
            serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?;
        jobs.push(job);
    }
    jobs.sort_by_key(|j| j.at_ms);
    Ok(jobs)
}

/// Write a trace as JSON Lines, gzipped when the name ends in `.gz`.
pub fn write_jobs(path: &Path, jobs: &[JobArrival]) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::best());
        write_lines(&mut out, jobs)?;
        out.finish()?.flush()
    } else {
        let mut out = std::io::BufWriter::new(file);
        write_lines(&mut out, jobs)?;
        out.flush()
    }
}

fn write_lines(out: &mut impl Write, jobs: &[JobArrival]) -> std::io::Result<()> {
    for job in jobs {
        serde_json::to_writer(&mut *out, job)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_through_gzipped_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl.gz");
        let jobs = vec![
            JobArrival {
                at_ms: 5,
                queue: "q".into(),
                duration_ms: 10,
                pipeline: Some("p".into()),
                priority: 3,
            },
            JobArrival {
                at_ms: 1,
                queue: "default".into(),
                duration_ms: 7,
                pipeline: None,
                priority: 0,
            },
        ];
        write_jobs(&path, &jobs).unwrap();
        let back = read_jobs(&path).unwrap();
        assert_eq!(back, vec![jobs[1].clone(), jobs[0].clone()]);
        let text = "{\"at_ms\":1,\"duration_ms\":2}\n\n{\"at_ms\":0,\"duration_ms\":2,\"x\":1}\n";
        assert!(parse_jobs(text.as_bytes())
            .unwrap_err()
            .starts_with("line 3:"));
    }
}
