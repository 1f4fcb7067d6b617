//! The demo's stack, all in this process: an emulator, the scheduler configured with two
//! fleets (queues `linux` and `arm`) on the local backend, push from the emulator to the
//! scheduler's webhook receiver, and a state directory (temporary unless one is given).

use anyhow::Context;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use updraft_backends::local::{LocalBackend, LocalOptions};
use updraft_backends::Backend;
use updraft_emulator::{EmulatorConfig, EmulatorHandle, PushTargets, WebhookAuth, WebhookTarget};
use updraft_model::Secret;
use updraft_scheduler::{Config, Scheduler, SchedulerHandle};

/// Fleets of the demo: (name and queue, most launches at once).
const FLEETS: [(&str, u32); 2] = [("linux", 8), ("arm", 4)];
/// How long `stop` waits for launches still ending (e.g. agents finishing a canceled job).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Stack {
    pub emulator: EmulatorHandle,
    pub scheduler: SchedulerHandle,
    local: LocalBackend,
    state: StateDir,
}

impl Stack {
    pub async fn start(state_dir: Option<PathBuf>) -> anyhow::Result<Stack> {
        let state = StateDir::new(state_dir, "updraft-demo")?;
        let emulator = updraft_emulator::start(EmulatorConfig::default()).await?;
        let webhook_token = Secret::new(format!("demo_{:032x}", rand::random::<u128>()));
        let agent =
            std::env::current_exe().context("finding the updraft binary to launch agents with")?;
        let text = scheduler_config(&emulator, &state.path, &agent, &webhook_token);
        let config = Config::parse(&text)
            .map_err(|errors| anyhow::anyhow!("the demo's scheduler config: {errors}"))?;

        let mut options = LocalOptions::new(state.path.join("local"));
        options.max_running_per_fleet = FLEETS
            .iter()
            .map(|(name, cap)| (name.to_string(), *cap as usize))
            .collect();
        options.stop_grace = Duration::from_secs(2);
        let local = LocalBackend::open(options).await?;
        let backends: BTreeMap<String, Arc<dyn Backend>> = [(
            "local".to_string(),
            Arc::new(local.clone()) as Arc<dyn Backend>,
        )]
        .into();
        let scheduler = Scheduler::start(config, backends)
            .await
            .context("starting the scheduler")?;
        emulator.set_push_targets(PushTargets {
            webhook: Some(WebhookTarget {
                url: format!("http://{}/webhooks/buildkite", scheduler.push_addr()),
                auth: WebhookAuth::Token(webhook_token),
            }),
            eventbridge_url: None,
        });
        Ok(Stack {
            emulator,
            scheduler,
            local,
            state,
        })
    }

    pub fn status_url(&self) -> String {
        format!("http://{}/status", self.scheduler.http_addr())
    }

    /// Let launches still ending finish, then stop the scheduler and the emulator.
    pub async fn stop(self) {
        let give_up = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        loop {
            let launches = self.local.list().await.unwrap_or_default();
            let open: Vec<_> = launches.iter().filter(|l| !l.phase.is_finished()).collect();
            if open.is_empty() {
                break;
            }
            if tokio::time::Instant::now() > give_up {
                for launch in &open {
                    if let Err(error) = self.local.delete(&launch.name).await {
                        eprintln!("updraft demo: cannot end launch {}: {error}", launch.name);
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(error) = self.scheduler.shutdown().await {
            eprintln!("updraft demo: the scheduler stopped with an error: {error:#}");
        }
        self.emulator.shutdown().await;
        drop(self.state);
    }
}

/// A string as a TOML basic string: a JSON string literal, whose escapes TOML reads the same.
pub(crate) fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The scheduler's configuration as TOML, so it goes through the same validation as a
/// user's file.
fn scheduler_config(
    emulator: &EmulatorHandle,
    state: &Path,
    agent: &Path,
    webhook_token: &Secret,
) -> String {
    let quote = toml_string;
    let mut text = format!(
        "[buildkite]\nendpoint = {}\nagent_token = {}\nstack_key = \"updraft-demo\"\n\n\
         [push]\nwebhook_token = {}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
         [ledger]\npath = {}\n\n[reconcile]\ninterval_ms = 1000\n",
        quote(&emulator.agent_endpoint()),
        quote(emulator.agent_token().expose()),
        quote(webhook_token.expose()),
        quote(&state.join("ledger.sqlite").to_string_lossy()),
    );
    for (name, max_in_flight) in FLEETS {
        text.push_str(&format!(
            "\n[[fleet]]\nname = \"{name}\"\nqueue = \"{name}\"\nbackend = \"local\"\nmax_in_flight = {max_in_flight}\n\
             pending_deadline = \"2m\"\nrunning_deadline = \"5m\"\n\n\
             [fleet.template]\ncommand = [{}, \"agent\", \"start\", \"--acquire-job\", \"{{job_id}}\"]\n",
            quote(&agent.to_string_lossy())
        ));
    }
    text
}

/// A state directory (ledger, launches): the one given, kept, or a fresh temporary one,
/// removed when dropped. The benchmarks use it too.
pub(crate) struct StateDir {
    pub path: PathBuf,
    temporary: bool,
}

impl StateDir {
    /// `given`, or a new directory named `<prefix>-<pid>-<random>` under the system's temp dir.
    pub fn new(given: Option<PathBuf>, prefix: &str) -> anyhow::Result<StateDir> {
        let (path, temporary) = match given {
            Some(path) => (path, false),
            None => {
                let unique = format!(
                    "{prefix}-{}-{:08x}",
                    std::process::id(),
                    rand::random::<u32>()
                );
                (std::env::temp_dir().join(unique), true)
            }
        };
        std::fs::create_dir_all(&path)
            .with_context(|| format!("--state-dir: cannot create {}", path.display()))?;
        Ok(StateDir { path, temporary })
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.temporary {
            if let Err(error) = std::fs::remove_dir_all(&self.path) {
                eprintln!(
                    "updraft: cannot remove the temporary directory {}: {error}",
                    self.path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_generated_config_is_valid_and_serves_both_queues() {
        let emulator = updraft_emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        let text = scheduler_config(
            &emulator,
            Path::new("/tmp/state \"dir\""),
            Path::new("/bin/updraft"),
            &Secret::new("t"),
        );
        let config = Config::parse(&text).expect("valid config");
        assert_eq!(
            config.queues(),
            vec!["arm".to_string(), "linux".to_string()]
        );
        assert_eq!(
            config.ledger.path,
            Path::new("/tmp/state \"dir\"/ledger.sqlite")
        );
        assert_eq!(config.fleets[0].template.command[0], "/bin/updraft");
        emulator.shutdown().await;
    }
}
