//! Helpers for the `updraft agent` process tests: an in-process emulator, pipelines, the
//! agent started as a real `updraft agent start` process, and the token-leak check.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;
use tokio::process::Command;
use updraft_buildkite::rest::RestClient;
use updraft_buildkite::ClientOptions;
use updraft_emulator::{EmulatorConfig, EmulatorHandle};

pub async fn emulator() -> EmulatorHandle {
    updraft_emulator::start(EmulatorConfig::default())
        .await
        .expect("emulator starts")
}

pub fn rest(emulator: &EmulatorHandle) -> RestClient {
    RestClient::new(
        &emulator.url(),
        &emulator.api_token(),
        &emulator.org(),
        ClientOptions::default(),
    )
    .unwrap()
}

/// A pipeline with one command step per entry, no checkout.
pub fn pipeline(emulator: &EmulatorHandle, slug: &str, commands: &[String]) {
    let mut yaml = String::from("env:\n  BUILDKITE_SKIP_CHECKOUT: \"true\"\nsteps:\n");
    for command in commands {
        yaml.push_str(&format!(
            "  - command: {}\n",
            serde_json::to_string(command).unwrap()
        ));
    }
    emulator
        .create_pipeline(slug, &yaml)
        .expect("pipeline is created");
}

/// `updraft agent start --acquire-job <job>`, configured through the environment as a
/// launch template would, with stdout and stderr captured.
pub fn agent_process(
    emulator: &EmulatorHandle,
    build_path: &Path,
    job: impl std::fmt::Display,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_updraft"));
    command
        .args(["agent", "start", "--build-path"])
        .arg(build_path)
        .env("BUILDKITE_AGENT_TOKEN", emulator.agent_token().expose())
        .env("BUILDKITE_AGENT_ENDPOINT", emulator.agent_endpoint())
        .env("BUILDKITE_AGENT_ACQUIRE_JOB", job.to_string())
        .env("UPDRAFT_LOG", "debug")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Fails if `text` shows any token: the emulator's agent and API tokens, or any session
/// (`bkaa_`) or job (`bkaj_`) token other than in its redacted form.
pub fn assert_no_token(text: &str, emulator: &EmulatorHandle) {
    for secret in [emulator.agent_token(), emulator.api_token()] {
        assert!(
            !text.contains(secret.expose()),
            "a token appears in the agent's output:\n{text}"
        );
    }
    for prefix in ["bkaa_", "bkaj_", "bkct_", "bkua_"] {
        for (at, _) in text.match_indices(prefix) {
            let rest = &text[at + prefix.len()..];
            assert!(
                rest.starts_with("[redacted]"),
                "an unredacted {prefix} token appears:\n{text}"
            );
        }
    }
}
