//! What a pool does about a decision: the busy-safe scale-in protocol as a pure function of
//! the members at one step.
//!
//! 1. A member whose platform is about to take it (a spot interruption or rebalance notice) is
//!    drained at once, whatever the decision.
//! 2. Below the desired count, members are added.
//! 3. Above it, members are drained in the simulator's order: wholly idle ones, longest idle
//!    first, then ones whose agents have not connected yet, newest first. A member with a busy
//!    agent is never picked (a drain is graceful anyway: each agent gets one SIGTERM and
//!    finishes its job first).
//! 4. A member's compute is removed only once its agents are gone: its backend says every
//!    agent exited, or — for a drained member whose agents were seen connected — Buildkite no
//!    longer lists any of them. A drained member never seen connected waits for its backend.

use super::observe::MemberView;
use updraft_backends::{MemberName, MemberPhase};

/// Why a member is drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainReason {
    Notice,
    Idle,
    Booting,
}

impl DrainReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainReason::Notice => "interruption notice",
            DrainReason::Idle => "idle above the desired count",
            DrainReason::Booting => "not needed before it finished booting",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub add: u32,
    pub drain: Vec<(MemberName, DrainReason)>,
    pub remove: Vec<MemberName>,
}

/// What to do so the pool heads for `desired` live members. `buildkite_confirms` is whether
/// the views come from Buildkite's own list of the pool's agents (a REST token).
pub(crate) fn plan(desired: u32, views: &[MemberView], buildkite_confirms: bool) -> Plan {
    let mut plan = Plan::default();
    for view in views {
        let gone = match &view.phase {
            MemberPhase::Exited { .. } => true,
            MemberPhase::Draining => {
                buildkite_confirms && view.seen_registered && view.registered == 0
            }
            MemberPhase::Booting | MemberPhase::Running => false,
        };
        if gone {
            plan.remove.push(view.name.clone());
        } else if view.notice.is_some()
            && matches!(view.phase, MemberPhase::Booting | MemberPhase::Running)
        {
            plan.drain.push((view.name.clone(), DrainReason::Notice));
        }
    }
    let live: Vec<&MemberView> = views.iter().filter(|v| v.is_live()).collect();
    let count = live.len() as u32;
    if desired > count {
        plan.add = desired - count;
        return plan;
    }
    let mut surplus = (count - desired) as usize;
    let mut idle: Vec<&MemberView> = live
        .iter()
        .copied()
        .filter(|v| v.idle_since_ms.is_some() && v.busy == 0)
        .collect();
    idle.sort_by_key(|v| (v.idle_since_ms, v.name.clone()));
    for view in idle.into_iter().take(surplus) {
        plan.drain.push((view.name.clone(), DrainReason::Idle));
        surplus -= 1;
    }
    let mut booting: Vec<&MemberView> = live
        .iter()
        .copied()
        .filter(|v| !v.is_ready() && v.busy == 0 && v.idle_since_ms.is_none())
        .collect();
    booting.sort_by_key(|v| (std::cmp::Reverse(v.launched_ms), v.name.clone()));
    for view in booting.into_iter().take(surplus) {
        plan.drain.push((view.name.clone(), DrainReason::Booting));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn view(name: &str, launched: i64, phase: MemberPhase) -> MemberView {
        MemberView {
            name: MemberName::new(name),
            phase,
            launched_ms: launched,
            agents: 1,
            registered: 1,
            busy: 0,
            jobs: Vec::new(),
            idle_since_ms: None,
            seen_registered: true,
            notice: None,
            capacity: "process",
        }
    }

    fn idle(name: &str, since: i64) -> MemberView {
        MemberView {
            idle_since_ms: Some(since),
            ..view(name, 0, MemberPhase::Running)
        }
    }

    fn busy(name: &str) -> MemberView {
        MemberView {
            busy: 1,
            jobs: vec![(Uuid::new_v4(), None)],
            ..view(name, 0, MemberPhase::Running)
        }
    }

    fn booting(name: &str, launched: i64) -> MemberView {
        MemberView {
            registered: 0,
            seen_registered: false,
            ..view(name, launched, MemberPhase::Running)
        }
    }

    fn drained(plan: &Plan) -> Vec<(&str, DrainReason)> {
        plan.drain.iter().map(|(n, r)| (n.as_str(), *r)).collect()
    }

    #[test]
    fn scale_in_takes_the_longest_idle_then_the_newest_booting_and_never_a_busy_member() {
        let views = [
            busy("busy-1"),
            idle("idle-recent", 900),
            idle("idle-long", 100),
            booting("boot-old", 10),
            booting("boot-new", 20),
            busy("busy-2"),
        ];
        assert_eq!(
            drained(&plan(3, &views, true)),
            [
                ("idle-long", DrainReason::Idle),
                ("idle-recent", DrainReason::Idle),
                ("boot-new", DrainReason::Booting)
            ]
        );
        let to_zero = plan(0, &views, true);
        assert_eq!(to_zero.drain.len(), 4, "the two busy members stay");
        assert!(to_zero
            .drain
            .iter()
            .all(|(n, _)| !n.as_str().starts_with("busy")));
        assert_eq!(plan(8, &views, true).add, 2);
    }

    #[test]
    fn compute_goes_only_once_the_agents_are_gone() {
        let exited = view(
            "exited",
            0,
            MemberPhase::Exited {
                detail: "agent 1: exited with status 0".into(),
            },
        );
        let confirmed = MemberView {
            registered: 0,
            ..view("confirmed", 0, MemberPhase::Draining)
        };
        let finishing = MemberView {
            busy: 1,
            ..view("finishing", 0, MemberPhase::Draining)
        };
        let never_seen = MemberView {
            registered: 0,
            seen_registered: false,
            ..view("never-seen", 0, MemberPhase::Draining)
        };
        let views = [exited, confirmed, finishing, never_seen];
        let removed = |confirms| -> Vec<String> {
            plan(0, &views, confirms)
                .remove
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(removed(true), ["exited", "confirmed"]);
        assert_eq!(
            removed(false),
            ["exited"],
            "without Buildkite's list only an exit counts"
        );
    }

    #[test]
    fn a_noticed_member_is_drained_and_replaced() {
        let noticed = MemberView {
            notice: Some("EC2 Spot Instance Interruption Warning".into()),
            ..busy("noticed")
        };
        let views = [noticed, idle("idle", 0)];
        let plan = plan(2, &views, true);
        assert_eq!(drained(&plan), [("noticed", DrainReason::Notice)]);
        assert_eq!(plan.add, 1);
    }
}
