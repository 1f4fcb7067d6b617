//! The scheduler's `/status` page, rendered by headless Chromium while a real scheduler runs
//! real launches (`updraft agent start --acquire-job` processes on the local backend) against
//! the emulator: the page must show both fleets with their load, the jobs that wait with the
//! reason each waits (a queue no fleet serves; a fleet at its `max_in_flight`), and the recent
//! launches with their outcomes — and no token of any kind anywhere in what the browser got.
//! A screenshot is taken too and kept in the target's temporary directory for a person to look
//! at (`status-page.png`).

mod status_support;

use status_support::chromium::{png_dimensions, Chromium};
use status_support::launches::{environment_values, LaunchReaper};
use status_support::page::{section, sections};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use updraft_backends::local::{LocalBackend, LocalOptions};
use updraft_backends::{Backend, LaunchName};
use updraft_emulator::{
    EmulatorConfig, EmulatorHandle, JobState, PushTargets, WebhookAuth, WebhookTarget,
};
use updraft_model::Secret;
use updraft_scheduler::{Config, Scheduler};

const UPDRAFT: &str = env!("CARGO_BIN_EXE_updraft");
/// Bounds every wait; each ends as soon as its condition holds (about 3 s on two cores).
const PATIENCE: Duration = Duration::from_secs(20);
const SCREEN: (u32, u32) = (1280, 900);
/// Debian's Chromium writes an empty 1280×900 page as a PNG of about 5 KB; the status page's
/// text and table borders make it several times that.
const MIN_SCREENSHOT_BYTES: u64 = 15_000;

/// A TOML string literal (JSON's string syntax is valid TOML).
fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// Two fleets on the local backend: `linux` (room for 4) and `serial` (one at a time).
fn config_text(emulator: &EmulatorHandle, state: &Path, webhook_token: &Secret) -> String {
    let mut text = format!(
        "[buildkite]\nendpoint = {}\nagent_token = {}\nstack_key = \"status\"\n\n\
         [push]\nwebhook_token = {}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[ledger]\npath = {}\n\n\
         [reconcile]\ninterval_ms = 500\n\n[local]\nstate_dir = {}\nstop_grace = \"2s\"\n",
        quote(&emulator.agent_endpoint()),
        quote(emulator.agent_token().expose()),
        quote(webhook_token.expose()),
        quote(&state.join("ledger.sqlite").to_string_lossy()),
        quote(&state.join("local").to_string_lossy()),
    );
    for (name, max_in_flight) in [("linux", 4), ("serial", 1)] {
        text.push_str(&format!(
            "\n[[fleet]]\nname = \"{name}\"\nqueue = \"{name}\"\nmax_in_flight = {max_in_flight}\n\n\
             [fleet.template]\ncommand = [{}, \"agent\", \"start\", \"--acquire-job\", \"{{job_id}}\"]\n\
             env = {{ BUILDKITE_BUILD_PATH = {}, BUILDKITE_SKIP_CHECKOUT = \"true\" }}\n",
            quote(UPDRAFT),
            quote(&state.join("builds").to_string_lossy()),
        ));
    }
    text
}

/// Two quick jobs for `linux`, two for `serial` that write their job token to `tokens/` and
/// then sleep until canceled, and one for `gpu`, which no fleet serves.
fn pipeline_yaml(tokens: &Path) -> String {
    let keep_token_and_sleep = format!(
        "printf %s \"$BUILDKITE_AGENT_ACCESS_TOKEN\" > {}/$BUILDKITE_JOB_ID; exec sleep 120",
        tokens.display()
    );
    format!(
        "steps:\n\
         \x20 - {{label: quick, command: \"echo quick\", parallelism: 2, agents: {{queue: linux}}}}\n\
         \x20 - {{label: slow, command: {}, parallelism: 2, agents: {{queue: serial}}}}\n\
         \x20 - {{label: render, command: \"echo render\", agents: {{queue: gpu}}}}\n",
        quote(&keep_token_and_sleep)
    )
}

/// Poll `condition` until it holds; panics with `what` and `diagnosis()` when `PATIENCE` runs out.
async fn wait_until<F: Future<Output = bool>>(
    what: &str,
    diagnosis: impl Fn() -> String,
    mut condition: impl FnMut() -> F,
) {
    let give_up = Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            Instant::now() < give_up,
            "{what} did not happen within {PATIENCE:?}: {}",
            diagnosis()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_fleets_waiting_reasons_and_launches_and_no_token() {
    let chromium = Chromium::installed();
    let emulator = updraft_emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator starts");
    let state = tempfile::tempdir().expect("state dir");
    let tokens_dir = state.path().join("tokens");
    std::fs::create_dir_all(&tokens_dir).expect("tokens dir");
    let webhook_token = Secret::new("status-page-webhook-token");

    let mut options = LocalOptions::new(state.path().join("local"));
    options.stop_grace = Duration::from_secs(2);
    let local = LocalBackend::open(options).await.expect("local backend");
    let config =
        Config::parse(&config_text(&emulator, state.path(), &webhook_token)).expect("valid config");
    let backends: BTreeMap<String, Arc<dyn Backend>> =
        [("local".to_string(), Arc::new(local) as Arc<dyn Backend>)].into();
    let scheduler = Scheduler::start(config, backends)
        .await
        .expect("scheduler starts");
    emulator.set_push_targets(PushTargets {
        webhook: Some(WebhookTarget {
            url: format!("http://{}/webhooks/buildkite", scheduler.push_addr()),
            auth: WebhookAuth::Token(webhook_token.clone()),
        }),
        eventbridge_url: None,
    });

    emulator
        .create_pipeline("status", &pipeline_yaml(&tokens_dir))
        .expect("pipeline");
    let build = emulator.create_build("status").expect("build");
    let [quick_a, quick_b, slow_a, slow_b, gpu] = build.job_ids[..] else {
        panic!(
            "expected 5 jobs (2 quick, 2 slow, 1 gpu), got {:?}",
            build.job_ids
        );
    };
    let reaper = LaunchReaper::new(
        build
            .job_ids
            .iter()
            .map(|j| LaunchName::for_job(*j).to_string())
            .collect(),
    );
    let states = || {
        format!(
            "{:?}",
            build
                .job_ids
                .iter()
                .map(|j| emulator.job_state(*j))
                .collect::<Vec<_>>()
        )
    };

    // The quick jobs finish and are closed; one slow job runs (and has its token), the other
    // is held by `serial`'s max_in_flight; the gpu job waits for a fleet that never comes.
    wait_until(
        "quick jobs passing and being closed, one slow job running",
        states,
        || async {
            let stats = scheduler.stats();
            [quick_a, quick_b]
                .iter()
                .all(|j| emulator.job_state(*j) == Some(JobState::Passed))
                && stats.closed >= 2
                && stats.in_flight == 1
                && [slow_a, slow_b]
                    .iter()
                    .filter(|j| emulator.job_state(**j) == Some(JobState::Running))
                    .count()
                    == 1
        },
    )
    .await;
    let (running, held) = if emulator.job_state(slow_a) == Some(JobState::Running) {
        (slow_a, slow_b)
    } else {
        (slow_b, slow_a)
    };
    let held_reason = "fleet serial at max_in_flight 1/1";
    let gpu_reason = "no fleet serves queue=gpu";
    let timelines = || format!("{:#?}", [held, gpu].map(|j| emulator.job_timeline(j)));
    let told = |job, reason: &str| {
        emulator
            .job_timeline(job)
            .is_some_and(|t| t["notifications"].to_string().contains(reason))
    };
    wait_until(
        "both waiting jobs being told why they wait",
        timelines,
        || async { told(held, held_reason) && told(gpu, gpu_reason) },
    )
    .await;
    let token_file = tokens_dir.join(running.to_string());
    wait_until(
        "the running slow job writing its job token",
        states,
        || async { std::fs::read_to_string(&token_file).is_ok_and(|t| !t.is_empty()) },
    )
    .await;
    let job_token = std::fs::read_to_string(&token_file).expect("job token file");
    let running_launch = LaunchName::for_job(running).to_string();
    let acquisition_tokens = environment_values(&running_launch, "BUILDKITE_AGENT_TOKEN");
    assert!(
        !acquisition_tokens.is_empty(),
        "the running launch {running_launch} should hold its job acquisition token in BUILDKITE_AGENT_TOKEN"
    );

    let url = format!("http://{}/status", scheduler.http_addr());
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let started = Instant::now();
    let (dom, ()) = tokio::join!(
        chromium.dump_dom(&url),
        chromium.screenshot(&url, &screenshot, SCREEN)
    );
    eprintln!(
        "Chromium rendered the page twice in {:?}; screenshot: {}",
        started.elapsed(),
        screenshot.display()
    );

    assert!(
        dom.contains("<title>Updraft status</title>"),
        "not the status page:\n{dom}"
    );
    let page = sections(&dom);
    let fleets = section(&page, "Fleets", &dom);
    let fleet_row = |name: &str| {
        fleets
            .rows
            .iter()
            .find(|r| r.first().is_some_and(|c| c == name))
            .unwrap_or_else(|| panic!("no row for fleet {name}: {fleets:#?}"))
    };
    assert_eq!(
        fleet_row("linux")[1..],
        ["queue=linux", "local", "0/4", "0"],
        "{fleets:#?}"
    );
    assert_eq!(
        fleet_row("serial")[1..],
        ["queue=serial", "local", "1/1", "1"],
        "{fleets:#?}"
    );

    let waiting = section(&page, "Waiting jobs", &dom);
    assert_eq!(waiting.heading, "Waiting jobs (2)", "{waiting:#?}");
    let waiting_row = |job: String| {
        waiting
            .rows
            .iter()
            .find(|r| r.first() == Some(&job))
            .unwrap_or_else(|| panic!("job {job} is not listed as waiting: {waiting:#?}"))
    };
    assert_eq!(
        waiting_row(gpu.to_string())[1..3],
        ["—", gpu_reason],
        "{waiting:#?}"
    );
    assert_eq!(
        waiting_row(held.to_string())[1..3],
        ["serial", held_reason],
        "{waiting:#?}"
    );

    let launches = section(&page, "Recent launches", &dom);
    let launch_row = |job| {
        let name = LaunchName::for_job(job).to_string();
        launches
            .rows
            .iter()
            .find(|r| r.first() == Some(&name))
            .unwrap_or_else(|| panic!("launch {name} is not listed: {launches:#?}"))
    };
    for quick in [quick_a, quick_b] {
        let row = launch_row(quick);
        assert_eq!(
            (row[1].as_str(), row[2].as_str(), row[5].as_str()),
            ("linux", "1", "passed"),
            "{launches:#?}"
        );
        assert!(
            !row[4].is_empty(),
            "a finished launch shows when it ended: {row:?}"
        );
    }
    let row = launch_row(running);
    assert_eq!(
        (row[1].as_str(), row[4].as_str(), row[5].as_str()),
        ("serial", "", "running"),
        "{launches:#?}"
    );
    assert_eq!(
        launches.rows.len(),
        1 + 3,
        "header and three launches, none for waiting jobs: {launches:#?}"
    );

    let secrets: Vec<(&str, String)> = [
        (
            "the agent token",
            emulator.agent_token().expose().to_string(),
        ),
        (
            "the REST API token",
            emulator.api_token().expose().to_string(),
        ),
        ("the webhook token", webhook_token.expose().to_string()),
        ("the running job's access token", job_token),
    ]
    .into_iter()
    .chain(
        acquisition_tokens
            .into_iter()
            .map(|t| ("a job acquisition token", t)),
    )
    .collect();
    for (what, value) in &secrets {
        assert!(
            !value.is_empty() && !dom.contains(value.as_str()),
            "{what} appears on the status page (or is empty)"
        );
    }

    let png = std::fs::read(&screenshot).unwrap_or_else(|e| {
        panic!(
            "Chromium wrote no screenshot at {}: {e}",
            screenshot.display()
        )
    });
    assert_eq!(
        png_dimensions(&png),
        Ok(SCREEN),
        "screenshot {}",
        screenshot.display()
    );
    assert!(
        png.len() as u64 >= MIN_SCREENSHOT_BYTES,
        "screenshot {} is {} bytes, about what an empty page gives",
        screenshot.display(),
        png.len()
    );

    for job in [gpu, held, running] {
        emulator.cancel_job(job).expect("cancel a job");
    }
    wait_until(
        "every job finishing and every launch process exiting",
        || format!("{} live {:?}", states(), reaper.live()),
        || async {
            build
                .job_ids
                .iter()
                .all(|j| emulator.job_state(*j).is_some_and(JobState::is_terminal))
                && reaper.live().is_empty()
        },
    )
    .await;
    scheduler.shutdown().await.expect("clean shutdown");
    emulator.shutdown().await;
}
