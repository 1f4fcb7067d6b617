//! The stand-in's work, every `poll`: boot the InService instances it has not seen (after
//! `boot_delay`), refuse new spot instances while spot is failing, reclaim interrupted
//! instances when their lead time is up, and end the instances moto says are terminated.
//! Ending one kills its process group and anything still carrying one of its agents' names
//! (`BUILDKITE_AGENT_NAME=<instance>-<n>`, which jobs inherit), after counting how many of
//! those were still alive: an instance terminated with a live agent is what busy-safe
//! scale-in must never do.

use crate::{imds, shim};
use anyhow::Context;
use aws_sdk_autoscaling::types::LifecycleState;
use aws_sdk_ec2::types::{InstanceAttributeName, InstanceStateName};
use base64::Engine;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use updraft_aws_fakes::{sdk_config, Moto};

/// How the stand-in behaves.
#[derive(Debug, Clone)]
pub struct BootSettings {
    /// From InService to running the user data.
    pub boot_delay: Duration,
    /// How often the groups and instances are looked at.
    pub poll: Duration,
}

impl Default for BootSettings {
    fn default() -> Self {
        BootSettings {
            boot_delay: Duration::from_millis(500),
            poll: Duration::from_millis(200),
        }
    }
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    /// Agent processes (and their jobs) still alive when the instance went: 0 for a
    /// busy-safe scale-in.
    pub agent_processes_alive: usize,
    /// It carried `updraft:drain` / `updraft:agents = exited` when it went.
    pub drained: bool,
    pub agents_exited: bool,
    /// It was reclaimed by [`Ec2Boot::interrupt`] rather than terminated by the scheduler.
    pub reclaimed: bool,
}

/// One instance the stand-in saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub instance: String,
    pub group: String,
    /// Its group's `updraft:capacity` tag (`spot`, `on-demand`).
    pub capacity: String,
    pub booted: bool,
    /// A spot instance taken back at once while spot was failing.
    pub refused_spot: bool,
    pub terminated: Option<Termination>,
}

struct Instance {
    record: InstanceRecord,
    boot_at: Instant,
    /// The boot script's process group.
    group_pid: Option<i32>,
}

#[derive(Default)]
struct State {
    instances: BTreeMap<String, Instance>,
    spot_failing: bool,
    reclaim_at: BTreeMap<String, Instant>,
}

struct Inner {
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    sqs: aws_sdk_sqs::Client,
    moto_endpoint: String,
    imds_base: String,
    shim_dir: PathBuf,
    logs_dir: PathBuf,
    settings: BootSettings,
    state: Mutex<State>,
}

/// The running stand-in. Dropping it kills every instance's processes.
pub struct Ec2Boot {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Live processes (zombies excluded) whose environment names one of `instance`'s agents.
fn agent_processes(instance: &str) -> Vec<i32> {
    let marker = format!("BUILDKITE_AGENT_NAME={instance}-");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let marked = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|var| var.starts_with(marker.as_bytes()))
            });
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(true);
            marked && !zombie
        })
        .collect()
}

fn kill_instance(instance: &str, group_pid: Option<i32>) {
    if let Some(group) = group_pid {
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
    for pid in agent_processes(instance) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

impl Ec2Boot {
    /// Start booting the instances of every Auto Scaling group `moto` has.
    pub async fn start(moto: &Moto, settings: BootSettings) -> anyhow::Result<Ec2Boot> {
        let sdk = sdk_config(moto.endpoint());
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let shim_dir = tempfile::tempdir()?;
        shim::write(shim_dir.path(), &Moto::python_path()).context("writing the aws command")?;
        let logs_dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let imds_base = format!("http://{}", listener.local_addr()?);
        let imds_app = imds::routes(ec2.clone());
        let imds_task = tokio::spawn(async move {
            let _ = axum::serve(listener, imds_app).await;
        });
        let inner = Arc::new(Inner {
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            ec2,
            sqs: aws_sdk_sqs::Client::new(&sdk),
            moto_endpoint: moto.endpoint().to_string(),
            imds_base,
            shim_dir: shim_dir.path().to_path_buf(),
            logs_dir: logs_dir.path().to_path_buf(),
            settings,
            state: Mutex::new(State::default()),
        });
        let watcher = tokio::spawn(watch(inner.clone()));
        Ok(Ec2Boot {
            inner,
            tasks: vec![imds_task, watcher],
            _dirs: (shim_dir, logs_dir),
        })
    }

    /// While `failing`, every new instance of a spot group is taken back at once.
    pub fn set_spot_failing(&self, failing: bool) {
        self.inner.state().spot_failing = failing;
    }

    /// Every instance seen so far.
    pub fn instances(&self) -> Vec<InstanceRecord> {
        self.inner
            .state()
            .instances
            .values()
            .map(|i| i.record.clone())
            .collect()
    }

    /// What an instance's boot script printed.
    pub fn log(&self, instance: &str) -> String {
        std::fs::read_to_string(self.inner.logs_dir.join(format!("{instance}.log")))
            .unwrap_or_default()
    }

    /// Send the spot interruption warning EventBridge would put on `queue_url` for
    /// `instance`, and reclaim (terminate) the instance `lead` later.
    pub async fn interrupt(
        &self,
        instance: &str,
        queue_url: &str,
        lead: Duration,
    ) -> anyhow::Result<()> {
        let event = serde_json::json!({
            "version": "0",
            "id": format!("interruption-{instance}"),
            "detail-type": "EC2 Spot Instance Interruption Warning",
            "source": "aws.ec2",
            "account": updraft_aws_fakes::sdk::ACCOUNT_ID,
            "time": chrono::Utc::now().to_rfc3339(),
            "region": updraft_aws_fakes::sdk::REGION,
            "resources": [format!("arn:aws:ec2:{}:{}:instance/{instance}", updraft_aws_fakes::sdk::REGION, updraft_aws_fakes::sdk::ACCOUNT_ID)],
            "detail": {"instance-id": instance, "instance-action": "terminate"},
        });
        self.inner
            .sqs
            .send_message()
            .queue_url(queue_url)
            .message_body(event.to_string())
            .send()
            .await
            .context("sending the interruption warning")?;
        self.inner
            .state()
            .reclaim_at
            .insert(instance.to_string(), Instant::now() + lead);
        Ok(())
    }
}

impl Drop for Ec2Boot {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let state = self.inner.state();
        for (id, instance) in &state.instances {
            kill_instance(id, instance.group_pid);
        }
    }
}

async fn watch(inner: Arc<Inner>) {
    loop {
        if let Err(error) = step(&inner).await {
            tracing::warn!("ec2-boot: {error:#}");
        }
        tokio::time::sleep(inner.settings.poll).await;
    }
}

async fn step(inner: &Inner) -> anyhow::Result<()> {
    let groups = inner
        .autoscaling
        .describe_auto_scaling_groups()
        .send()
        .await
        .context("DescribeAutoScalingGroups")?;
    for group in groups.auto_scaling_groups() {
        let name = group.auto_scaling_group_name().unwrap_or_default();
        let capacity = group
            .tags()
            .iter()
            .find(|t| t.key() == Some("updraft:capacity"))
            .and_then(|t| t.value())
            .unwrap_or_default()
            .to_string();
        for instance in group.instances() {
            let Some(id) = instance.instance_id() else {
                continue;
            };
            if instance.lifecycle_state() != Some(&LifecycleState::InService)
                || inner.state().instances.contains_key(id)
            {
                continue;
            }
            let refuse = capacity == "spot" && inner.state().spot_failing;
            if refuse {
                inner
                    .autoscaling
                    .terminate_instance_in_auto_scaling_group()
                    .instance_id(id)
                    .should_decrement_desired_capacity(true)
                    .send()
                    .await
                    .context("taking back a spot instance")?;
            }
            inner.state().instances.insert(
                id.to_string(),
                Instance {
                    record: InstanceRecord {
                        instance: id.to_string(),
                        group: name.to_string(),
                        capacity: capacity.clone(),
                        booted: false,
                        refused_spot: refuse,
                        terminated: None,
                    },
                    boot_at: Instant::now() + inner.settings.boot_delay,
                    group_pid: None,
                },
            );
        }
    }
    let due: Vec<String> = inner
        .state()
        .instances
        .values()
        .filter(|i| !i.record.booted && !i.record.refused_spot && i.boot_at <= Instant::now())
        .map(|i| i.record.instance.clone())
        .collect();
    for id in due {
        boot(inner, &id).await?;
    }
    reclaim(inner).await?;
    end_terminated(inner).await
}

async fn boot(inner: &Inner, id: &str) -> anyhow::Result<()> {
    let attribute = inner
        .ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .context("reading user data")?;
    let encoded = attribute
        .user_data()
        .and_then(|u| u.value())
        .unwrap_or_default();
    let script = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .context("user data is not base64")?;
    let script_path = inner.logs_dir.join(format!("{id}.sh"));
    std::fs::write(&script_path, script)?;
    let log = std::fs::File::create(inner.logs_dir.join(format!("{id}.log")))?;
    let path = format!(
        "{}:{}",
        inner.shim_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = tokio::process::Command::new("bash")
        .arg(&script_path)
        .env("PATH", path)
        .env("AWS_ENDPOINT_URL", &inner.moto_endpoint)
        .env("AWS_ACCESS_KEY_ID", updraft_aws_fakes::sdk::ACCESS_KEY_ID)
        .env(
            "AWS_SECRET_ACCESS_KEY",
            updraft_aws_fakes::sdk::SECRET_ACCESS_KEY,
        )
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("{}/{id}", inner.imds_base),
        )
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the boot script")?;
    let group = child.id().map(|pid| pid as i32);
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    if let Some(instance) = inner.state().instances.get_mut(id) {
        instance.record.booted = true;
        instance.group_pid = group;
    }
    tracing::debug!(instance = id, "ec2-boot: booted");
    Ok(())
}

async fn reclaim(inner: &Inner) -> anyhow::Result<()> {
    let due: Vec<String> = {
        let mut state = inner.state();
        let now = Instant::now();
        let due: Vec<String> = state
            .reclaim_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &due {
            state.reclaim_at.remove(id);
            if let Some(instance) = state.instances.get_mut(id) {
                instance.record.terminated = Some(Termination {
                    agent_processes_alive: agent_processes(id).len(),
                    drained: false,
                    agents_exited: false,
                    reclaimed: true,
                });
            }
        }
        due
    };
    for id in due {
        let tags = instance_tags(inner, &id).await?;
        if let Some(Some(t)) = inner
            .state()
            .instances
            .get_mut(&id)
            .map(|i| i.record.terminated.as_mut())
        {
            t.drained = tags.contains_key("updraft:drain");
            t.agents_exited = tags.get("updraft:agents").map(String::as_str) == Some("exited");
        }
        inner
            .ec2
            .terminate_instances()
            .instance_ids(&id)
            .send()
            .await
            .context("reclaiming an interrupted instance")?;
        let group = inner.state().instances.get(&id).and_then(|i| i.group_pid);
        kill_instance(&id, group);
    }
    Ok(())
}

async fn instance_tags(inner: &Inner, id: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let described = inner
        .ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .context("DescribeInstances")?;
    Ok(described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect())
}

async fn end_terminated(inner: &Inner) -> anyhow::Result<()> {
    let live: Vec<String> = inner
        .state()
        .instances
        .values()
        .filter(|i| i.record.booted && i.record.terminated.is_none())
        .map(|i| i.record.instance.clone())
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    let described = inner
        .ec2
        .describe_instances()
        .set_instance_ids(Some(live.clone()))
        .send()
        .await
        .context("DescribeInstances")?;
    let mut running: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut ended: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for instance in described.reservations().iter().flat_map(|r| r.instances()) {
        let Some(id) = instance.instance_id() else {
            continue;
        };
        let tags = instance
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect();
        let gone = matches!(
            instance.state().and_then(|s| s.name()),
            Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated)
        );
        if gone {
            ended.insert(id.to_string(), tags);
        } else {
            running.insert(id.to_string(), tags);
        }
    }
    for id in live.iter().filter(|id| !running.contains_key(*id)) {
        let tags = ended.remove(id).unwrap_or_default();
        let alive = agent_processes(id).len();
        let group = {
            let mut state = inner.state();
            let Some(instance) = state.instances.get_mut(id) else {
                continue;
            };
            instance.record.terminated = Some(Termination {
                agent_processes_alive: alive,
                drained: tags.contains_key("updraft:drain"),
                agents_exited: tags.get("updraft:agents").map(String::as_str) == Some("exited"),
                reclaimed: false,
            });
            instance.group_pid
        };
        if alive > 0 {
            tracing::warn!(instance = %id, alive, "ec2-boot: instance terminated with agents alive");
        }
        kill_instance(id, group);
    }
    Ok(())
}
