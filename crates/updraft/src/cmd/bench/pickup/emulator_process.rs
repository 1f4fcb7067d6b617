//! An `updraft emulator` in a child process, so the benchmark process holds only the
//! scheduler: its CPU time and peak RSS are then the scheduler's, not the emulator's. Push
//! targets are set at runtime through the emulator's own `/_emulator/push` route, once the
//! scheduler's receiver has its port.

use anyhow::Context;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use updraft_model::Secret;

/// How long the emulator may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const READY_PREFIX: &str = "emulator listening on ";

pub struct EmulatorProcess {
    child: Child,
    pub url: String,
    pub org: String,
    pub agent_token: Secret,
    pub api_token: Secret,
    http: reqwest::Client,
}

impl EmulatorProcess {
    /// Start `<this binary> emulator` on a free loopback port with fresh tokens and no rate
    /// limits (the benchmarks measure Updraft, not Buildkite's quotas).
    pub async fn start() -> anyhow::Result<EmulatorProcess> {
        let exe = std::env::current_exe().context("finding the updraft binary")?;
        let org = "bench".to_string();
        let agent_token = Secret::new(format!("bkct_{:032x}", rand::random::<u128>()));
        let api_token = Secret::new(format!("bkua_{:032x}", rand::random::<u128>()));
        // Tokens go through the environment, not argv, which any local user can read.
        let mut child = Command::new(exe)
            .args([
                "emulator",
                "--listen",
                "127.0.0.1:0",
                "--org",
                &org,
                "--rate-limits",
                "off",
            ])
            .env("UPDRAFT_EMULATOR_AGENT_TOKEN", agent_token.expose())
            .env("UPDRAFT_EMULATOR_API_TOKEN", api_token.expose())
            .env("UPDRAFT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting `updraft emulator`")?;
        let stdout = child.stdout.take().context("the emulator's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix(READY_PREFIX) {
                    return Ok(url.trim().to_string());
                }
            }
            anyhow::bail!("`updraft emulator` exited without printing {READY_PREFIX:?}")
        })
        .await
        .context("`updraft emulator` did not say where it listens in time")??;
        // Keep reading stdout so the emulator never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(EmulatorProcess {
            child,
            url,
            org,
            agent_token,
            api_token,
            http: reqwest::Client::new(),
        })
    }

    pub fn agent_endpoint(&self) -> String {
        format!("{}/v3", self.url)
    }

    /// Send push events (webhooks) to `url` with `token`, or stop pushing with `None`.
    pub async fn push_to(&self, target: Option<(&str, &Secret)>) -> anyhow::Result<()> {
        let body = match target {
            Some((url, token)) => json!({"webhook_url": url, "webhook_token": token.expose()}),
            None => json!({}),
        };
        self.put("push", body).await
    }

    async fn put(&self, route: &str, body: serde_json::Value) -> anyhow::Result<()> {
        let url = format!("{}/_emulator/{route}", self.url);
        let response = self
            .http
            .put(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("PUT {url}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("PUT {url}: {status}: {text}");
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Err(error) = self.child.kill().await {
            eprintln!("stopping the emulator: {error}");
        }
    }
}
