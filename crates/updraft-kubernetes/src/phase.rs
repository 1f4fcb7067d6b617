//! What a launch's Job and pods say about it, in the scheduler's terms: its phase and, while
//! it waits, why — in words for the build. A pure function of the watched views and the time,
//! so every rule is tested without a cluster:
//!
//! - an image that cannot be pulled (or a container that cannot start for want of a Secret or
//!   ConfigMap) past the grace → `Refused` with the image and the kubelet's reason; an invalid
//!   image name at once;
//! - a pod the scheduler cannot place until just before the fleet's pending deadline →
//!   `Refused` with the scheduler's message (a little early, so the build gets that message
//!   rather than the scheduler's generic "did not start in time");
//! - a pod still waiting for the launch's own token Secret past the grace (its scheduler
//!   stopped between creating the Job and the Secret) → `Failed`, so it is relaunched;
//! - a pod that fails or is evicted, deleted or lost with its node → `Failed` with the reason:
//!   the scheduler relaunches it when the agent had not taken the job yet, and otherwise
//!   leaves the job to Buildkite;
//! - a Job past its `activeDeadlineSeconds`, or stopped by Updraft → `Failed`.

use crate::slim::{JobOutcome, JobView, PodPhase, PodView};
use chrono::{DateTime, Utc};
use std::time::Duration;
use updraft_backends::{LaunchName, LaunchPhase};

/// The timings failure detection uses for one launch.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub image_pull_grace: Duration,
    /// How long a pod may stay unschedulable: the fleet's pending deadline.
    pub pending_deadline: Duration,
}

/// A launch's phase and, while it waits, why. `pods` in the order they were first seen (the
/// cache's order), borrowed: a reconcile pass assesses every launch.
pub fn assess<'a>(
    launch: &LaunchName,
    job: &JobView,
    pods: impl DoubleEndedIterator<Item = &'a PodView> + Clone,
    now: DateTime<Utc>,
    timings: Timings,
) -> (LaunchPhase, Option<String>) {
    let pod = current_pod(pods);
    match &job.outcome {
        Some(JobOutcome::Complete) => return (LaunchPhase::Succeeded, None),
        Some(JobOutcome::Failed { reason, message }) => {
            return (
                LaunchPhase::Failed {
                    reason: failure(job, pod, reason, message),
                },
                None,
            );
        }
        None => {}
    }
    let Some(pod) = pod else {
        return (LaunchPhase::Pending, None);
    };
    match pod.phase {
        PodPhase::Succeeded => return (LaunchPhase::Succeeded, None),
        PodPhase::Failed => {
            return (
                LaunchPhase::Failed {
                    reason: pod_failure(pod),
                },
                None,
            )
        }
        _ if pod.gone => {
            return (
                LaunchPhase::Failed {
                    reason: "its pod was deleted".into(),
                },
                None,
            )
        }
        _ => {}
    }
    if let Some(waiting) = &pod.waiting {
        let stuck_for = elapsed(waiting.since, now);
        // The launch's own token Secret is missing only when a scheduler stopped between
        // creating the Job and the Secret: this launch can never start, but another can.
        let own_secret = format!("secret \"{launch}\" not found");
        if waiting.message.contains(&own_secret) && stuck_for >= timings.image_pull_grace {
            return (
                LaunchPhase::Failed {
                    reason: "its job acquisition token Secret is missing (its scheduler stopped while launching it)".into(),
                },
                None,
            );
        }
        let what = if waiting.reason.starts_with("CreateContainer") {
            format!("container {} cannot start", waiting.container)
        } else {
            format!(
                "image \"{}\" of container {} cannot be pulled",
                waiting.image, waiting.container
            )
        };
        if &*waiting.reason == "InvalidImageName" || stuck_for >= timings.image_pull_grace {
            return (
                LaunchPhase::Refused {
                    reason: format!("{what}: {}: {}", waiting.reason, waiting.message),
                },
                None,
            );
        }
        let detail = format!(
            "{what} yet; the job fails if it still cannot after {}s",
            timings.image_pull_grace.as_secs()
        );
        return (LaunchPhase::Pending, Some(detail));
    }
    if let Some(message) = &pod.unschedulable {
        if elapsed(job.created, now) >= unschedulable_limit(timings.pending_deadline) {
            return (
                LaunchPhase::Refused {
                    reason: format!(
                        "the pod could not be scheduled within the pending deadline: {message}"
                    ),
                },
                None,
            );
        }
        return (
            LaunchPhase::Pending,
            Some(format!("waiting for a node: {message}")),
        );
    }
    match pod.phase {
        PodPhase::Running => (LaunchPhase::Running, None),
        _ => (LaunchPhase::Pending, None),
    }
}

/// When an unschedulable pod is refused: at the pending deadline, less a margin of up to 2 s
/// (a quarter of short deadlines) so this message reaches the build before the scheduler
/// stops the launch for its deadline.
pub fn unschedulable_limit(pending_deadline: Duration) -> Duration {
    pending_deadline - (pending_deadline / 4).min(Duration::from_secs(2))
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - since).to_std().unwrap_or_default()
}

/// The pod that speaks for the launch: the newest live one, else the last that was.
fn current_pod<'a>(
    mut pods: impl DoubleEndedIterator<Item = &'a PodView> + Clone,
) -> Option<&'a PodView> {
    pods.clone()
        .rev()
        .find(|p| !p.gone)
        .or_else(|| pods.next_back())
}

/// Why a failed Job failed, in words.
fn failure(job: &JobView, pod: Option<&PodView>, reason: &str, message: &str) -> String {
    if job.stopped {
        return "stopped by Updraft".into();
    }
    match (reason, pod) {
        ("DeadlineExceeded", _) => format!("it ran past its activeDeadlineSeconds ({message})"),
        (_, Some(pod)) if pod.phase == PodPhase::Failed || pod.gone => pod_failure(pod),
        _ => format!("the Job failed: {reason}: {message}"),
    }
}

fn pod_failure(pod: &PodView) -> String {
    let own = |fallback: &str| -> String {
        match (&pod.reason, &pod.message) {
            (Some(reason), Some(message)) => format!("{reason}: {message}"),
            (Some(reason), None) => reason.to_string(),
            _ => fallback.to_string(),
        }
    };
    match pod.reason.as_deref() {
        Some("Evicted") => format!("the pod was evicted ({})", own("Evicted")),
        Some("NodeLost") => format!("the pod's node was lost ({})", own("NodeLost")),
        _ => match &pod.agent_ended {
            Some(ended) if ended.reason.is_empty() => {
                format!("the agent container exited with status {}", ended.exit_code)
            }
            Some(ended) => format!(
                "the agent container exited with status {} ({})",
                ended.exit_code, ended.reason
            ),
            None if pod.gone || pod.deleting => "its pod was deleted".into(),
            None => format!("the pod failed ({})", own("no reason given")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slim::{Terminated, Waiting};

    const GRACE: Duration = Duration::from_secs(30);

    fn name() -> LaunchName {
        LaunchName::parse("updraft-5a5f1f4e-2f57-4a8e-9d36-3c1a1f0e9b10").unwrap()
    }

    fn timings() -> Timings {
        Timings {
            image_pull_grace: GRACE,
            pending_deadline: Duration::from_secs(300),
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn job() -> JobView {
        JobView {
            uid: "u1".into(),
            namespace: "ci".into(),
            fleet: "linux".into(),
            created: at(0),
            outcome: None,
            stopped: false,
            deleting: false,
        }
    }

    fn pod(phase: PodPhase) -> PodView {
        PodView {
            name: "updraft-x-abcde".into(),
            phase,
            reason: None,
            message: None,
            start_time: Some(at(1)),
            unschedulable: None,
            waiting: None,
            agent_ended: None,
            deleting: false,
            gone: false,
        }
    }

    #[test]
    fn a_job_without_a_pod_waits_and_a_running_pod_runs() {
        assert_eq!(
            assess(&name(), &job(), std::iter::empty(), at(5), timings()),
            (LaunchPhase::Pending, None)
        );
        assert_eq!(
            assess(
                &name(),
                &job(),
                [pod(PodPhase::Running)].iter(),
                at(5),
                timings()
            )
            .0,
            LaunchPhase::Running
        );
        let mut done = job();
        done.outcome = Some(JobOutcome::Complete);
        assert_eq!(
            assess(
                &name(),
                &done,
                [pod(PodPhase::Succeeded)].iter(),
                at(9),
                timings()
            )
            .0,
            LaunchPhase::Succeeded
        );
    }

    #[test]
    fn a_bad_image_is_refused_after_the_grace_with_the_image_and_reason() {
        let mut pulling = pod(PodPhase::Pending);
        pulling.waiting = Some(Waiting {
            container: "agent".into(),
            image: "ghcr.io/acme/nope:1".into(),
            reason: "ImagePullBackOff".into(),
            message: "Back-off pulling image \"ghcr.io/acme/nope:1\"".into(),
            since: at(1),
        });
        let (phase, detail) = assess(
            &name(),
            &job(),
            std::iter::once(&pulling),
            at(10),
            timings(),
        );
        assert_eq!(phase, LaunchPhase::Pending);
        assert!(detail.unwrap().contains("cannot be pulled yet"));
        let (phase, _) = assess(
            &name(),
            &job(),
            std::iter::once(&pulling),
            at(31),
            timings(),
        );
        let LaunchPhase::Refused { reason } = phase else {
            panic!("{phase:?}")
        };
        assert!(
            reason.contains("ghcr.io/acme/nope:1") && reason.contains("ImagePullBackOff"),
            "{reason}"
        );

        pulling.waiting.as_mut().unwrap().reason = "InvalidImageName".into();
        assert!(matches!(
            assess(&name(), &job(), std::iter::once(&pulling), at(2), timings()).0,
            LaunchPhase::Refused { .. }
        ));
    }

    #[test]
    fn an_unschedulable_pod_is_refused_just_before_the_pending_deadline_with_the_schedulers_message(
    ) {
        let mut stuck = pod(PodPhase::Pending);
        stuck.unschedulable = Some("0/1 nodes are available: 1 Insufficient cpu.".into());
        let (phase, detail) = assess(&name(), &job(), std::iter::once(&stuck), at(100), timings());
        assert_eq!(phase, LaunchPhase::Pending);
        assert_eq!(
            detail.as_deref(),
            Some("waiting for a node: 0/1 nodes are available: 1 Insufficient cpu.")
        );
        let (phase, _) = assess(&name(), &job(), std::iter::once(&stuck), at(298), timings());
        let LaunchPhase::Refused { reason } = phase else {
            panic!("{phase:?}")
        };
        assert!(
            reason.ends_with("0/1 nodes are available: 1 Insufficient cpu."),
            "{reason}"
        );
        assert_eq!(
            unschedulable_limit(Duration::from_secs(4)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn evicted_lost_and_deleted_pods_fail_the_launch_with_the_reason() {
        let mut evicted = pod(PodPhase::Failed);
        evicted.reason = Some("Evicted".into());
        evicted.message = Some("The node was low on resource: memory.".into());
        let LaunchPhase::Failed { reason } =
            assess(&name(), &job(), std::iter::once(&evicted), at(5), timings()).0
        else {
            panic!()
        };
        assert_eq!(
            reason,
            "the pod was evicted (Evicted: The node was low on resource: memory.)"
        );

        let mut lost = pod(PodPhase::Failed);
        lost.reason = Some("NodeLost".into());
        let mut failed_job = job();
        failed_job.outcome = Some(JobOutcome::Failed {
            reason: "BackoffLimitExceeded".into(),
            message: "Job has reached the specified backoff limit".into(),
        });
        let LaunchPhase::Failed { reason } = assess(
            &name(),
            &failed_job,
            std::iter::once(&lost),
            at(5),
            timings(),
        )
        .0
        else {
            panic!()
        };
        assert!(reason.starts_with("the pod's node was lost"), "{reason}");

        let mut deleted = pod(PodPhase::Running);
        deleted.gone = true;
        let LaunchPhase::Failed { reason } =
            assess(&name(), &job(), std::iter::once(&deleted), at(5), timings()).0
        else {
            panic!()
        };
        assert_eq!(reason, "its pod was deleted");

        let mut oom = pod(PodPhase::Failed);
        oom.agent_ended = Some(Terminated {
            exit_code: 137,
            reason: "OOMKilled".into(),
        });
        let LaunchPhase::Failed { reason } = assess(
            &name(),
            &failed_job,
            std::iter::once(&oom),
            at(5),
            timings(),
        )
        .0
        else {
            panic!()
        };
        assert_eq!(
            reason,
            "the agent container exited with status 137 (OOMKilled)"
        );
    }

    #[test]
    fn a_launch_whose_own_token_secret_never_came_fails_so_it_is_relaunched() {
        let mut waiting = pod(PodPhase::Pending);
        waiting.waiting = Some(Waiting {
            container: "agent".into(),
            image: "agent:3".into(),
            reason: "CreateContainerConfigError".into(),
            message: format!("secret \"{}\" not found", name()).into(),
            since: at(1),
        });
        let (phase, detail) = assess(&name(), &job(), std::iter::once(&waiting), at(5), timings());
        assert_eq!(phase, LaunchPhase::Pending);
        assert!(detail
            .unwrap()
            .starts_with("container agent cannot start yet"));
        let (phase, _) = assess(
            &name(),
            &job(),
            std::iter::once(&waiting),
            at(40),
            timings(),
        );
        let LaunchPhase::Failed { reason } = phase else {
            panic!("{phase:?}")
        };
        assert!(reason.contains("token Secret is missing"), "{reason}");
    }

    #[test]
    fn deadlines_and_stops_say_so() {
        let mut late = job();
        late.outcome = Some(JobOutcome::Failed {
            reason: "DeadlineExceeded".into(),
            message: "Job was active longer than specified deadline".into(),
        });
        let LaunchPhase::Failed { reason } =
            assess(&name(), &late, std::iter::empty(), at(5), timings()).0
        else {
            panic!()
        };
        assert!(
            reason.starts_with("it ran past its activeDeadlineSeconds"),
            "{reason}"
        );
        late.stopped = true;
        assert_eq!(
            assess(&name(), &late, std::iter::empty(), at(5), timings()).0,
            LaunchPhase::Failed {
                reason: "stopped by Updraft".into()
            }
        );
    }
}
