//! What a pool sees at each step: its members as the backend lists them, joined with
//! Buildkite's view of their agents (the REST agents list, matched by the `<member>-<n>`
//! names) or, without a REST token, with the queue's metrics counts. The `Tracker` remembers
//! between steps what Buildkite alone cannot say: which members' agents were ever seen
//! connected, since when a member has been wholly idle, and how long members took to boot.
//! `observation` turns one step into the `Observation` the scaling policy decides from, with
//! the same counts `updraft sim` uses.

use chrono::DateTime;
use std::collections::{HashMap, HashSet, VecDeque};
use updraft_backends::{member_of_agent, MemberName, MemberPhase, MemberStatus};
use updraft_buildkite::rest;
use updraft_model::scaling::{AgentCounts, InstanceCounts, JobCounts, Observation};
use uuid::Uuid;

/// Boot times kept for the status page and for fitting the simulator.
const BOOT_SAMPLES_KEPT: usize = 200;

/// One of the pool's agents as Buildkite lists it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentSeen {
    pub member: MemberName,
    /// The job it runs, with when the job started (ms).
    pub job: Option<(Uuid, Option<i64>)>,
    pub connected_ms: Option<i64>,
    pub last_finished_ms: Option<i64>,
}

fn parse_ms(raw: &Option<String>) -> Option<i64> {
    raw.as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
}

/// The agents of `members` in Buildkite's list (connected or stopping).
pub(crate) fn agents_of(listed: &[rest::Agent], members: &[MemberStatus]) -> Vec<AgentSeen> {
    let names: HashSet<&MemberName> = members.iter().map(|m| &m.name).collect();
    listed
        .iter()
        .filter_map(|agent| {
            let (member, _) = member_of_agent(&agent.name)?;
            names.contains(&member).then(|| AgentSeen {
                member,
                job: agent.job.as_ref().and_then(|job| {
                    let id = job.id.parse().ok()?;
                    Some((id, parse_ms(&job.started_at)))
                }),
                connected_ms: parse_ms(&agent.connected_at),
                last_finished_ms: parse_ms(&agent.last_job_finished_at),
            })
        })
        .collect()
}

/// The queue's agents by the metrics endpoint, when no REST token lets the pool see its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueueAgents {
    pub busy: u32,
    pub idle: u32,
}

/// One member at one step, as the plan and the status page see it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MemberView {
    pub name: MemberName,
    pub phase: MemberPhase,
    pub launched_ms: i64,
    pub agents: u32,
    /// Its agents connected to Buildkite now.
    pub registered: u32,
    /// Its agents running a job now.
    pub busy: u32,
    /// The jobs its agents run, with when each started.
    pub jobs: Vec<(Uuid, Option<i64>)>,
    /// Since when every one of its agents has been connected and idle.
    pub idle_since_ms: Option<i64>,
    /// Whether all its agents were ever seen connected (so their absence later means they
    /// left).
    pub seen_registered: bool,
    pub notice: Option<String>,
    pub capacity: &'static str,
}

impl MemberView {
    /// Counted as capacity: launched or running, not draining, not about to be taken away.
    pub fn is_live(&self) -> bool {
        matches!(self.phase, MemberPhase::Booting | MemberPhase::Running) && self.notice.is_none()
    }

    /// All its agents are connected.
    pub fn is_ready(&self) -> bool {
        self.registered >= self.agents
    }
}

#[derive(Debug, Default)]
struct Memory {
    seen_registered: bool,
    idle_since_ms: Option<i64>,
}

/// What a pool remembers of its members between steps.
#[derive(Debug)]
pub(crate) struct Tracker {
    members: HashMap<MemberName, Memory>,
    boot_estimate_ms: f64,
    boot_samples_ms: VecDeque<i64>,
    /// Without a REST token: since when at least `i + 1` members' worth of the queue's agents
    /// have been idle without a break.
    idle_ladder: Vec<i64>,
}

impl Tracker {
    pub fn new(typical_boot_ms: i64) -> Self {
        Tracker {
            members: HashMap::new(),
            boot_estimate_ms: typical_boot_ms as f64,
            boot_samples_ms: VecDeque::new(),
            idle_ladder: Vec::new(),
        }
    }

    /// The pool's boot time estimate: a moving average of its measured boots (as the
    /// simulator keeps it).
    pub fn boot_estimate_ms(&self) -> i64 {
        self.boot_estimate_ms as i64
    }

    /// The most recent boot times measured, oldest first.
    pub fn boot_samples_ms(&self) -> Vec<i64> {
        self.boot_samples_ms.iter().copied().collect()
    }

    fn record_boot(&mut self, boot_ms: i64) {
        self.boot_estimate_ms = 0.8 * self.boot_estimate_ms + 0.2 * boot_ms as f64;
        self.boot_samples_ms.push_back(boot_ms);
        if self.boot_samples_ms.len() > BOOT_SAMPLES_KEPT {
            self.boot_samples_ms.pop_front();
        }
    }

    /// One step with Buildkite's list of the pool's agents.
    pub fn step_with_agents(
        &mut self,
        now_ms: i64,
        members: &[MemberStatus],
        agents: &[AgentSeen],
    ) -> (Vec<MemberView>, Vec<i64>) {
        self.members
            .retain(|name, _| members.iter().any(|m| &m.name == name));
        let mut boots = Vec::new();
        let mut views = Vec::new();
        for member in members {
            let own: Vec<&AgentSeen> = agents.iter().filter(|a| a.member == member.name).collect();
            let registered = own.len() as u32;
            let jobs: Vec<(Uuid, Option<i64>)> = own.iter().filter_map(|a| a.job).collect();
            let busy = jobs.len() as u32;
            let launched_ms = member.launched_at.timestamp_millis();
            let memory = self.members.entry(member.name.clone()).or_default();
            let ready = registered >= member.agents;
            if ready && !memory.seen_registered {
                memory.seen_registered = true;
                let connected = own.iter().filter_map(|a| a.connected_ms).max();
                boots.push((connected.unwrap_or(now_ms) - launched_ms).max(0));
            }
            memory.idle_since_ms = if ready && busy == 0 {
                let stamped = own
                    .iter()
                    .map(|a| a.connected_ms.max(a.last_finished_ms))
                    .collect::<Option<Vec<i64>>>()
                    .and_then(|times| times.into_iter().max());
                Some(
                    memory
                        .idle_since_ms
                        .or(stamped)
                        .unwrap_or(now_ms)
                        .min(now_ms),
                )
            } else {
                None
            };
            views.push(MemberView {
                name: member.name.clone(),
                phase: member.phase.clone(),
                launched_ms,
                agents: member.agents,
                registered,
                busy,
                jobs,
                idle_since_ms: memory.idle_since_ms,
                seen_registered: memory.seen_registered,
                notice: member.notice.clone(),
                capacity: member.capacity,
            });
        }
        for boot in &boots {
            self.record_boot(*boot);
        }
        (views, boots)
    }

    /// One step with only the queue's counts: the oldest live members are taken to be the
    /// connected ones, and as many of those as the idle agents fill are taken to be wholly
    /// idle, for as long as that many have been idle. A drain chosen this way may hit a busy
    /// member; it is still graceful, so that agent finishes its job first.
    pub fn step_with_counts(
        &mut self,
        now_ms: i64,
        members: &[MemberStatus],
        queue: QueueAgents,
    ) -> Vec<MemberView> {
        self.members
            .retain(|name, _| members.iter().any(|m| &m.name == name));
        let mut order: Vec<&MemberStatus> = members.iter().collect();
        order.sort_by_key(|m| (m.launched_at, m.name.clone()));
        let mut connected = queue.busy + queue.idle;
        let per_member = members.iter().map(|m| m.agents).max().unwrap_or(1).max(1);
        let idle_members = (queue.idle / per_member) as usize;
        self.idle_ladder.truncate(idle_members);
        while self.idle_ladder.len() < idle_members {
            self.idle_ladder.push(now_ms);
        }
        let mut idle_slots = self.idle_ladder.iter();
        let mut views = Vec::new();
        for member in order {
            let live = matches!(member.phase, MemberPhase::Running);
            let registered = if live {
                member.agents.min(connected)
            } else {
                0
            };
            connected -= registered;
            let memory = self.members.entry(member.name.clone()).or_default();
            let ready = live && registered >= member.agents;
            memory.seen_registered |= ready;
            let idle_since_ms = if ready {
                idle_slots.next().copied()
            } else {
                None
            };
            views.push(MemberView {
                name: member.name.clone(),
                phase: member.phase.clone(),
                launched_ms: member.launched_at.timestamp_millis(),
                agents: member.agents,
                registered,
                busy: if idle_since_ms.is_some() {
                    0
                } else {
                    registered
                },
                jobs: Vec::new(),
                idle_since_ms,
                seen_registered: memory.seen_registered,
                notice: member.notice.clone(),
                capacity: member.capacity,
            });
        }
        views
    }
}

/// The counts a policy decides from, built from one step's member views.
pub(crate) struct Counts {
    pub jobs: JobCounts,
    pub agents: AgentCounts,
    pub instances: InstanceCounts,
    pub idle_since_ms: Vec<i64>,
}

/// Count one step: `scheduled` jobs wait for the pool (taken in, not yet taken by an agent
/// or overflowed), `waiting` are behind wait steps on the queue; `desired` is the pool's
/// last decision.
pub(crate) fn counts(views: &[MemberView], scheduled: u32, waiting: u32, desired: u32) -> Counts {
    let live: Vec<&MemberView> = views.iter().filter(|v| v.is_live()).collect();
    let busy: u32 = live.iter().map(|v| v.busy).sum();
    let registered: u32 = live.iter().map(|v| v.registered.min(v.agents)).sum();
    let all: u32 = live.iter().map(|v| v.agents).sum();
    let in_service = live.iter().filter(|v| v.is_ready()).count() as u32;
    Counts {
        jobs: JobCounts {
            scheduled,
            running: busy,
            waiting,
        },
        agents: AgentCounts {
            busy,
            idle: registered.saturating_sub(busy),
            booting: all.saturating_sub(registered),
        },
        instances: InstanceCounts {
            desired,
            in_service,
            booting: live.len() as u32 - in_service,
        },
        idle_since_ms: live.iter().filter_map(|v| v.idle_since_ms).collect(),
    }
}

impl Counts {
    pub fn observation(&self, now_ms: i64, arrivals_total: u64, boot_ms: i64) -> Observation<'_> {
        Observation {
            now_ms,
            jobs: self.jobs,
            agents: self.agents,
            instances: self.instances,
            arrivals_total,
            idle_since_ms: &self.idle_since_ms,
            boot_time_ms: boot_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    const T0: i64 = 1_767_571_200_000;

    fn member(name: &str, launched_s: i64, phase: MemberPhase) -> MemberStatus {
        MemberStatus {
            name: MemberName::new(name),
            fleet: "warm".into(),
            phase,
            launched_at: Utc.timestamp_millis_opt(T0 + launched_s * 1000).unwrap(),
            agents: 1,
            notice: None,
            capacity: "process",
        }
    }

    fn agent(member: &str, job: Option<Uuid>, connected_s: i64) -> AgentSeen {
        AgentSeen {
            member: MemberName::new(member),
            job: job.map(|j| (j, None)),
            connected_ms: Some(T0 + connected_s * 1000),
            last_finished_ms: None,
        }
    }

    #[test]
    fn buildkite_s_agents_say_which_members_are_ready_busy_and_idle_since_when() {
        let members = [
            member("warm-a", 0, MemberPhase::Running),
            member("warm-b", 0, MemberPhase::Running),
            member("warm-c", 5, MemberPhase::Running),
            member("warm-d", 0, MemberPhase::Draining),
        ];
        let job = Uuid::new_v4();
        let agents = [agent("warm-a", Some(job), 2), agent("warm-b", None, 3)];
        let mut tracker = Tracker::new(1_000);
        let (views, boots) = tracker.step_with_agents(T0 + 10_000, &members, &agents);
        assert_eq!(boots, vec![2_000, 3_000]);
        assert_eq!((views[0].busy, views[0].idle_since_ms), (1, None));
        assert_eq!(views[1].idle_since_ms, Some(T0 + 3_000));
        assert!(!views[2].is_ready() && views[2].is_live());
        assert!(!views[3].is_live());
        let counts = counts(&views, 4, 1, 3);
        assert_eq!(
            (counts.jobs, counts.agents, counts.instances),
            (
                JobCounts {
                    scheduled: 4,
                    running: 1,
                    waiting: 1
                },
                AgentCounts {
                    busy: 1,
                    idle: 1,
                    booting: 1
                },
                InstanceCounts {
                    desired: 3,
                    in_service: 2,
                    booting: 1
                }
            )
        );
        assert_eq!(counts.idle_since_ms, vec![T0 + 3_000]);
        // Seen once, a boot is not measured again; idle time is remembered.
        let (views, boots) = tracker.step_with_agents(T0 + 20_000, &members, &agents);
        assert!(boots.is_empty());
        assert_eq!(views[1].idle_since_ms, Some(T0 + 3_000));
        assert_eq!(tracker.boot_samples_ms(), vec![2_000, 3_000]);
    }

    #[test]
    fn without_a_rest_token_the_oldest_members_carry_the_queue_s_idle_agents() {
        let members = [
            member("warm-new", 9, MemberPhase::Running),
            member("warm-old", 0, MemberPhase::Running),
            member("warm-mid", 4, MemberPhase::Running),
        ];
        let mut tracker = Tracker::new(1_000);
        let views = tracker.step_with_counts(T0, &members, QueueAgents { busy: 1, idle: 1 });
        let by_name = |name: &str| views.iter().find(|v| v.name.as_str() == name).unwrap();
        assert_eq!(by_name("warm-old").idle_since_ms, Some(T0));
        assert_eq!(by_name("warm-mid").busy, 1);
        assert_eq!(by_name("warm-new").registered, 0);
        let views =
            tracker.step_with_counts(T0 + 5_000, &members, QueueAgents { busy: 0, idle: 2 });
        let by_name = |name: &str| views.iter().find(|v| v.name.as_str() == name).unwrap();
        assert_eq!(by_name("warm-old").idle_since_ms, Some(T0));
        assert_eq!(by_name("warm-mid").idle_since_ms, Some(T0 + 5_000));
    }
}
