//! Reports as people and programs read them: an aligned comparison table, a JSON document
//! and CSV files (one row per run; one row per sample for the series).

use crate::report::Report;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The comparison table, one row per run.
pub fn table(reports: &[Report]) -> String {
    let header = [
        "run",
        "jobs",
        "wait p50",
        "p95",
        "p99",
        "busy agent-h",
        "idle agent-h",
        "idle/busy",
        "instance-h",
        "cost $",
        "peak agents",
        "launches",
    ];
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                r.jobs.to_string(),
                wait(r.wait.p50_s),
                wait(r.wait.p95_s),
                wait(r.wait.p99_s),
                format!("{:.1}", r.busy_agent_seconds / 3600.0),
                format!("{:.1}", r.idle_agent_seconds / 3600.0),
                if r.busy_agent_seconds > 0.0 {
                    format!(
                        "{:.0}%",
                        100.0 * r.idle_agent_seconds / r.busy_agent_seconds
                    )
                } else {
                    "-".into()
                },
                format!("{:.1}", r.instance_seconds / 3600.0),
                format!("{:.2}", r.cost),
                r.peak_agents.to_string(),
                r.launches.to_string(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (c, cell) in cells.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{cell}", " ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(&mut out, &header.map(String::from));
    for row in &rows {
        line(&mut out, row);
    }
    out
}

/// A wait in the table: seconds below two minutes, else minutes.
fn wait(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.1}s")
    } else {
        format!("{:.1}m", seconds / 60.0)
    }
}

/// What was run, written beside the reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub workload: String,
    pub backend: String,
    pub seed: u64,
}

#[derive(Serialize)]
struct Document<'a> {
    run: &'a RunInfo,
    reports: &'a [Report],
}

const CSV_HEADER: &str = "run,jobs,wait_p50_s,wait_p95_s,wait_p99_s,wait_max_s,wait_mean_s,busy_agent_seconds,idle_agent_seconds,agent_seconds,booting_instance_seconds,instance_seconds,billed_instance_seconds,cost,peak_agents,peak_instances,launches,span_seconds";

/// One CSV row per run.
pub fn summary_csv(reports: &[Report]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in reports {
        let _ = writeln!(
            out,
            "{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.4},{},{},{},{:.3}",
            csv_field(&r.label),
            r.jobs,
            r.wait.p50_s,
            r.wait.p95_s,
            r.wait.p99_s,
            r.wait.max_s,
            r.wait.mean_s,
            r.busy_agent_seconds,
            r.idle_agent_seconds,
            r.agent_seconds,
            r.booting_instance_seconds,
            r.instance_seconds,
            r.billed_instance_seconds,
            r.cost,
            r.peak_agents,
            r.peak_instances,
            r.launches,
            r.span_seconds
        );
    }
    out
}

/// One CSV row per sample of every run.
pub fn series_csv(reports: &[Report]) -> String {
    let mut out = String::from("run,t_s,queued,pool_agents,busy,booting,one_shot\n");
    for r in reports {
        let label = csv_field(&r.label);
        for s in &r.samples {
            let _ = writeln!(
                out,
                "{label},{},{},{},{},{},{}",
                s.t_s, s.queued, s.pool_agents, s.busy, s.booting, s.one_shot
            );
        }
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Write `summary.json`, `summary.csv` and `series.csv` into `dir`; returns the paths.
pub fn write_files(
    dir: &Path,
    info: &RunInfo,
    reports: &[Report],
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(&Document { run: info, reports })?;
    let files = [
        ("summary.json", json + "\n"),
        ("summary.csv", summary_csv(reports)),
        ("series.csv", series_csv(reports)),
    ];
    let mut paths = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        paths.push(path);
    }
    Ok(paths)
}
