//! `Ec2Pool`, the `PoolBackend` on EC2 Auto Scaling. A member is an instance of one of the
//! fleet's groups; its agents are named `<instance id>-<n>`.
//!
//! - `add`: make the fleet's launch templates and groups if needed (and put the agent token
//!   in SSM), then raise the spot group's desired count (or the on-demand group's while spot
//!   is failing).
//! - `members`: the groups' instances with their tags: `updraft:drain` makes an instance
//!   `Draining`, `updraft:agents = exited` makes it `Exited`, `updraft:notice` is a notice.
//!   Each listing also checks the spot group's unfilled requests and falls back.
//! - `drain`: tag the instance `updraft:drain`; its boot script sends each agent one
//!   SIGTERM. Tagging again changes nothing, so a drain is safe to repeat.
//! - `remove`: `TerminateInstanceInAutoScalingGroup` with the decrement, only for an
//!   instance that was drained (or whose agents exited).

use crate::errors::{classify, BACKEND};
use crate::groups::{group_name, Capacity, GroupSpec};
use crate::notices::Notices;
use crate::settings::{Ec2FleetSettings, Ec2Settings};
use crate::spot::SpotWatch;
use crate::tags::{DRAIN_TAG, EXITED_TAG, EXITED_VALUE, NOTICE_TAG};
use crate::user_data::BootScript;
use crate::Ec2Clients;
use async_trait::async_trait;
use aws_sdk_autoscaling::types::LifecycleState;
use aws_sdk_ec2::types::{InstanceStateName, Tag};
use aws_sdk_ssm::types::ParameterType;
use base64::Engine;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use updraft_backends::{
    BackendError, MemberName, MemberPhase, MemberSpec, MemberStatus, PoolBackend,
};

/// One pool fleet on EC2.
#[derive(Debug, Clone)]
pub struct Ec2Fleet {
    pub name: String,
    pub settings: Ec2FleetSettings,
    /// Agents per instance (the pool's `agents_per_instance`).
    pub agents: u32,
    /// The pool's `max`; each group may hold twice as many, so draining instances never block
    /// their replacements.
    pub max: u32,
}

/// What the pool remembers of a fleet: the boot script its templates carry, and spot.
#[derive(Debug, Default)]
struct FleetState {
    prepared: Option<String>,
    spot: SpotWatch,
}

/// EC2 pools. Cheap to clone.
#[derive(Clone)]
pub struct Ec2Pool {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Ec2Settings,
    fleets: BTreeMap<String, Ec2Fleet>,
    autoscaling: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    /// Held across AWS calls: a fleet's add, listing and fallback must not interleave (the
    /// pool manager calls them one at a time anyway).
    state: Mutex<BTreeMap<String, FleetState>>,
    notices: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = &self.notices {
            task.abort();
        }
    }
}

/// An instance of a fleet's group, as `members` reads it.
struct GroupInstance {
    id: String,
    capacity: Capacity,
    lifecycle: Option<LifecycleState>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl Ec2Pool {
    /// The pool for `fleets`, checked against AWS at once (a missing permission or a wrong
    /// endpoint stops start-up with AWS's words), reading notices when a queue is set.
    pub async fn open(
        clients: &Ec2Clients,
        settings: Ec2Settings,
        fleets: Vec<Ec2Fleet>,
    ) -> Result<Ec2Pool, BackendError> {
        let autoscaling = clients.autoscaling();
        let names: Vec<String> = fleets
            .iter()
            .flat_map(|f| {
                Capacity::of(&f.settings)
                    .iter()
                    .map(|c| group_name(&settings.prefix, &f.name, *c))
            })
            .collect();
        autoscaling
            .describe_auto_scaling_groups()
            .set_auto_scaling_group_names(Some(names))
            .send()
            .await
            .map_err(|e| classify("DescribeAutoScalingGroups", &e))?;
        let notices = settings.notice_queue_url.clone().map(|queue_url| {
            tokio::spawn(
                Notices {
                    sqs: clients.sqs(),
                    ec2: clients.ec2(),
                    queue_url,
                    wait: settings.notice_wait.get(),
                    prefix: settings.prefix.clone(),
                }
                .run(),
            )
        });
        Ok(Ec2Pool {
            inner: Arc::new(Inner {
                fleets: fleets.into_iter().map(|f| (f.name.clone(), f)).collect(),
                settings,
                autoscaling,
                ec2: clients.ec2(),
                ssm: clients.ssm(),
                state: Mutex::new(BTreeMap::new()),
                notices,
            }),
        })
    }

    fn fleet(&self, name: &str) -> Result<&Ec2Fleet, BackendError> {
        self.inner
            .fleets
            .get(name)
            .ok_or_else(|| BackendError::Invalid {
                backend: BACKEND,
                name: name.to_string(),
                detail: format!("no EC2 settings for fleet {name:?} ([fleet.ec2])"),
            })
    }

    fn group(&self, fleet: &str, capacity: Capacity) -> String {
        group_name(&self.inner.settings.prefix, fleet, capacity)
    }

    fn max_size(fleet: &Ec2Fleet) -> i32 {
        (fleet.max.saturating_mul(2)).max(1) as i32
    }

    /// The fleet's groups: each one's desired count and instances.
    async fn groups(
        &self,
        fleet: &Ec2Fleet,
    ) -> Result<(HashMap<Capacity, i32>, Vec<GroupInstance>), BackendError> {
        let by_name: HashMap<String, Capacity> = Capacity::of(&fleet.settings)
            .iter()
            .map(|c| (self.group(&fleet.name, *c), *c))
            .collect();
        let found = self
            .inner
            .autoscaling
            .describe_auto_scaling_groups()
            .set_auto_scaling_group_names(Some(by_name.keys().cloned().collect()))
            .send()
            .await
            .map_err(|e| classify("DescribeAutoScalingGroups", &e))?;
        let mut desired = HashMap::new();
        let mut instances = Vec::new();
        for group in found.auto_scaling_groups() {
            let Some(capacity) = group
                .auto_scaling_group_name()
                .and_then(|n| by_name.get(n))
                .copied()
            else {
                continue;
            };
            desired.insert(capacity, group.desired_capacity().unwrap_or(0));
            for instance in group.instances() {
                if let Some(id) = instance.instance_id() {
                    instances.push(GroupInstance {
                        id: id.to_string(),
                        capacity,
                        lifecycle: instance.lifecycle_state().cloned(),
                    });
                }
            }
        }
        Ok((desired, instances))
    }

    async fn set_desired(&self, group: &str, desired: i32) -> Result<(), BackendError> {
        self.inner
            .autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(group)
            .desired_capacity(desired)
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| classify("SetDesiredCapacity", &e))?;
        Ok(())
    }

    /// Whether the group reported a failed or cancelled launch since `since_ms`.
    async fn launch_failed(&self, group: &str, since_ms: i64) -> Result<bool, BackendError> {
        let activities = self
            .inner
            .autoscaling
            .describe_scaling_activities()
            .auto_scaling_group_name(group)
            .max_records(20)
            .send()
            .await
            .map_err(|e| classify("DescribeScalingActivities", &e))?;
        Ok(activities.activities().iter().any(|activity| {
            let failed = matches!(
                activity.status_code().map(|s| s.as_str()),
                Some("Failed" | "Cancelled")
            );
            let recent = activity
                .start_time()
                .is_some_and(|t| t.to_millis().is_ok_and(|ms| ms >= since_ms));
            failed && recent
        }))
    }

    /// Spot requests that went unfilled: cancel them and buy the shortfall on-demand.
    async fn fall_back_if_spot_failed(
        &self,
        fleet: &Ec2Fleet,
        state: &mut FleetState,
        desired: &HashMap<Capacity, i32>,
        instances: &[GroupInstance],
    ) -> Result<(), BackendError> {
        let Some(since) = state.spot.pending_since() else {
            return Ok(());
        };
        let spot_group = self.group(&fleet.name, Capacity::Spot);
        let in_spot = instances
            .iter()
            .filter(|i| i.capacity == Capacity::Spot)
            .count() as u32;
        let failed = self.launch_failed(&spot_group, since).await?;
        let shortfall = state.spot.check(
            in_spot,
            failed,
            now_ms(),
            fleet.settings.spot_launch_timeout.get().as_millis() as i64,
            fleet.settings.spot_retry_after.get().as_millis() as i64,
        );
        let Some(shortfall) = shortfall else {
            return Ok(());
        };
        self.set_desired(&spot_group, in_spot as i32).await?;
        let on_demand = self.group(&fleet.name, Capacity::OnDemand);
        let current = desired.get(&Capacity::OnDemand).copied().unwrap_or(0);
        let raised = (current + shortfall as i32).min(Self::max_size(fleet));
        self.set_desired(&on_demand, raised).await?;
        tracing::warn!(fleet = %fleet.name, shortfall, "spot capacity did not arrive; buying on-demand instead for a while");
        Ok(())
    }

    /// Tags, launch time and state of `ids`, by instance id.
    async fn describe(
        &self,
        ids: Vec<String>,
    ) -> Result<HashMap<String, (BTreeMap<String, String>, DateTime<Utc>, bool)>, BackendError>
    {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let described = self
            .inner
            .ec2
            .describe_instances()
            .set_instance_ids(Some(ids))
            .send()
            .await
            .map_err(|e| classify("DescribeInstances", &e))?;
        let mut out = HashMap::new();
        for instance in described.reservations().iter().flat_map(|r| r.instances()) {
            let Some(id) = instance.instance_id() else {
                continue;
            };
            let tags: BTreeMap<String, String> = instance
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect();
            let launched = instance
                .launch_time()
                .and_then(|t| t.to_millis().ok())
                .and_then(DateTime::from_timestamp_millis)
                .unwrap_or_else(Utc::now);
            let gone = matches!(
                instance.state().and_then(|s| s.name()),
                Some(
                    InstanceStateName::ShuttingDown
                        | InstanceStateName::Terminated
                        | InstanceStateName::Stopping
                        | InstanceStateName::Stopped
                )
            );
            out.insert(id.to_string(), (tags, launched, gone));
        }
        Ok(out)
    }

    /// Put the fleet's agent token where its instances read it, as a SecureString.
    async fn put_token(&self, fleet: &str, spec: &MemberSpec) -> Result<String, BackendError> {
        let name = format!(
            "{}/{fleet}/agent-token",
            self.inner.settings.parameter_prefix
        );
        let token =
            spec.secrets
                .get("BUILDKITE_AGENT_TOKEN")
                .ok_or_else(|| BackendError::Invalid {
                    backend: BACKEND,
                    name: fleet.to_string(),
                    detail: "pool members need BUILDKITE_AGENT_TOKEN".into(),
                })?;
        self.inner
            .ssm
            .put_parameter()
            .name(&name)
            .value(token.expose())
            .r#type(ParameterType::SecureString)
            .set_key_id(self.inner.settings.parameter_kms_key.clone())
            .overwrite(true)
            .send()
            .await
            .map_err(|e| classify("PutParameter", &e))?;
        Ok(name)
    }
}

#[async_trait]
impl PoolBackend for Ec2Pool {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    /// Elastic CI Stack instances take 90 s to 3.5 min to a connected agent.
    fn typical_boot_time(&self) -> Duration {
        Duration::from_secs(120)
    }

    async fn members(&self, fleet: &str) -> Result<Vec<MemberStatus>, BackendError> {
        let fleet = self.fleet(fleet)?;
        let (desired, instances) = self.groups(fleet).await?;
        if fleet.settings.spot {
            let mut states = self.inner.state.lock().await;
            let state = states.entry(fleet.name.clone()).or_default();
            self.fall_back_if_spot_failed(fleet, state, &desired, &instances)
                .await?;
        }
        let described = self
            .describe(instances.iter().map(|i| i.id.clone()).collect())
            .await?;
        let mut members = Vec::new();
        for instance in instances {
            let Some((tags, launched_at, gone)) = described.get(&instance.id) else {
                continue;
            };
            let terminating = matches!(
                instance.lifecycle.as_ref().map(|l| l.as_str()),
                Some(state) if state.starts_with("Terminat")
            );
            if *gone || terminating {
                continue;
            }
            let phase = if tags.get(EXITED_TAG).map(String::as_str) == Some(EXITED_VALUE) {
                MemberPhase::Exited {
                    detail: "its boot script saw every agent exit".into(),
                }
            } else if tags.contains_key(DRAIN_TAG) {
                MemberPhase::Draining
            } else if instance.lifecycle == Some(LifecycleState::InService) {
                MemberPhase::Running
            } else {
                MemberPhase::Booting
            };
            members.push(MemberStatus {
                name: MemberName::new(instance.id.clone()),
                fleet: fleet.name.clone(),
                phase,
                launched_at: *launched_at,
                agents: fleet.agents,
                notice: tags.get(NOTICE_TAG).cloned(),
                capacity: instance.capacity.as_str(),
            });
        }
        Ok(members)
    }

    async fn add(&self, spec: &MemberSpec, count: u32) -> Result<(), BackendError> {
        let fleet = self.fleet(&spec.fleet)?;
        let mut states = self.inner.state.lock().await;
        let state = states.entry(fleet.name.clone()).or_default();
        let token_parameter = format!(
            "{}/{}/agent-token",
            self.inner.settings.parameter_prefix, fleet.name
        );
        let script = BootScript {
            fleet: &fleet.name,
            agents: spec.agents,
            command: &spec.command,
            env: &spec.env,
            token_parameter: &token_parameter,
            agent_dir: &fleet.settings.agent_dir,
            drain_poll: fleet.settings.drain_poll.get(),
        }
        .render()
        .map_err(|detail| BackendError::Invalid {
            backend: BACKEND,
            name: fleet.name.clone(),
            detail,
        })?;
        let user_data = base64::engine::general_purpose::STANDARD.encode(&script);
        if state.prepared.as_deref() != Some(user_data.as_str()) {
            self.put_token(&fleet.name, spec).await?;
            GroupSpec {
                settings: &self.inner.settings,
                fleet: &fleet.name,
                instance: &fleet.settings,
                user_data: user_data.clone(),
                max_size: Self::max_size(fleet),
            }
            .ensure(&self.inner.ec2, &self.inner.autoscaling)
            .await?;
            state.prepared = Some(user_data);
        }
        let now = now_ms();
        let capacity = if fleet.settings.spot && state.spot.available(now) {
            Capacity::Spot
        } else {
            Capacity::OnDemand
        };
        let (desired, _) = self.groups(fleet).await?;
        let raised = (desired.get(&capacity).copied().unwrap_or(0) + count as i32)
            .min(Self::max_size(fleet));
        self.set_desired(&self.group(&fleet.name, capacity), raised)
            .await?;
        if capacity == Capacity::Spot {
            state.spot.raised(raised as u32, now);
        }
        tracing::info!(fleet = %fleet.name, count, group = %self.group(&fleet.name, capacity), desired = raised, "pool instances asked for");
        Ok(())
    }

    async fn drain(&self, member: &MemberName) -> Result<(), BackendError> {
        self.inner
            .ec2
            .create_tags()
            .resources(member.as_str())
            .tags(
                Tag::builder()
                    .key(DRAIN_TAG)
                    .value(Utc::now().to_rfc3339())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("CreateTags", &e))?;
        tracing::info!(instance = %member, "pool instance draining: each agent stops after its current job");
        Ok(())
    }

    async fn remove(&self, member: &MemberName) -> Result<(), BackendError> {
        let described = self.describe(vec![member.to_string()]).await?;
        let Some((tags, _, gone)) = described.get(member.as_str()) else {
            return Ok(());
        };
        if !tags.contains_key(DRAIN_TAG) && !tags.contains_key(EXITED_TAG) {
            return Err(BackendError::Invalid {
                backend: BACKEND,
                name: member.to_string(),
                detail: "the instance was never drained; drain it and wait for its agents".into(),
            });
        }
        let in_group = self
            .inner
            .autoscaling
            .describe_auto_scaling_instances()
            .instance_ids(member.as_str())
            .send()
            .await
            .map_err(|e| classify("DescribeAutoScalingInstances", &e))?;
        let Some(group) = in_group
            .auto_scaling_instances()
            .first()
            .and_then(|i| i.auto_scaling_group_name())
            .map(str::to_string)
        else {
            return Ok(());
        };
        if *gone {
            return Ok(());
        }
        self.inner
            .autoscaling
            .terminate_instance_in_auto_scaling_group()
            .instance_id(member.as_str())
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .map_err(|e| classify("TerminateInstanceInAutoScalingGroup", &e))?;
        if let Some(fleet) = tags.get(crate::tags::FLEET_TAG) {
            if group == self.group(fleet, Capacity::Spot) {
                let mut states = self.inner.state.lock().await;
                states.entry(fleet.clone()).or_default().spot.removed();
            }
        }
        tracing::info!(instance = %member, group, "pool instance terminated, its group decremented");
        Ok(())
    }
}
