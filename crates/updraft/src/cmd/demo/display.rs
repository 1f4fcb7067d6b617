//! How the demo shows progress: on a terminal, an indicatif bar with live counts and a line
//! per finished job; otherwise (a pipe, CI) plain timestamped lines, one per job change.

use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;
use updraft_buildkite::rest::{Build, Job};
use updraft_model::JobState;

pub struct Display {
    started: Instant,
    bar: Option<ProgressBar>,
    /// Last state shown per job id.
    seen: HashMap<String, String>,
    /// Command jobs per build number, for the bar's length.
    totals: HashMap<u64, usize>,
}

/// A job's label as the pipeline gave it.
pub fn job_label(job: &Job) -> String {
    job.name
        .clone()
        .or_else(|| job.step_key.clone())
        .unwrap_or_else(|| job.id.clone())
}

impl Display {
    pub fn new(status_url: &str) -> Display {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} jobs finished · {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            bar
        });
        let display = Display {
            started: Instant::now(),
            bar,
            seen: HashMap::new(),
            totals: HashMap::new(),
        };
        display.note(&format!(
            "emulator, scheduler and local backend are up; status page {status_url}"
        ));
        display
    }

    /// Show what changed in one build since the last look.
    pub fn observe(&mut self, build: &Build) {
        let scripts: Vec<&Job> = build
            .jobs
            .iter()
            .filter(|j| j.job_type == "script")
            .collect();
        self.totals.insert(build.number, scripts.len());
        for job in scripts {
            let state = job.state.clone().unwrap_or_else(|| "unknown".to_string());
            if self.seen.get(&job.id) == Some(&state) {
                continue;
            }
            self.seen.insert(job.id.clone(), state.clone());
            let worth_a_line = match (&self.bar, job.state()) {
                (Some(_), Some(parsed)) => parsed.is_terminal(),
                (None, Some(parsed)) => {
                    parsed.is_terminal()
                        || parsed == JobState::Running
                        || parsed == JobState::Canceling
                }
                (_, None) => true,
            };
            if worth_a_line {
                self.note(&format!(
                    "build #{:<2} {:<28} {state}",
                    build.number,
                    job_label(job)
                ));
            }
        }
        if let Some(bar) = &self.bar {
            let finished = self.count(|s| s.is_terminal());
            bar.set_length(self.totals.values().sum::<usize>() as u64);
            bar.set_position(finished as u64);
            bar.set_message(format!(
                "{} running · {} passed · {} failed · {} canceled",
                self.count(|s| matches!(s, JobState::Running | JobState::Canceling)),
                self.count(|s| s == JobState::Passed),
                self.count(|s| s == JobState::Failed),
                self.count(|s| s == JobState::Canceled),
            ));
        }
    }

    fn count(&self, matches: impl Fn(JobState) -> bool) -> usize {
        self.seen
            .values()
            .filter(|s| s.parse::<JobState>().is_ok_and(&matches))
            .count()
    }

    /// One line of news, above the bar on a terminal.
    pub fn note(&self, message: &str) {
        let line = format!("{:>7.2}s  {message}", self.started.elapsed().as_secs_f64());
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
