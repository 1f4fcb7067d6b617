//! Concurrency groups: at most `concurrency` jobs of a `concurrency_group` hold a slot
//! (scheduled up to running); the rest wait as `limited`, oldest first.

use super::State;
use updraft_model::JobState;
use uuid::Uuid;

impl State {
    /// Jobs of `group` holding a slot (scheduled up to running).
    fn active_in_group(&self, group: &str) -> usize {
        self.jobs
            .values()
            .filter(|j| j.step.concurrency.as_ref().is_some_and(|(g, _)| g == group))
            .filter(|j| {
                matches!(
                    j.state,
                    JobState::Scheduled
                        | JobState::Reserved
                        | JobState::Assigned
                        | JobState::Accepted
                        | JobState::Running
                        | JobState::Canceling
                        | JobState::TimingOut
                )
            })
            .count()
    }

    /// `scheduled` if the job's concurrency group has a free slot, else `limited` (queued).
    pub(super) fn admit_to_group(&mut self, id: Uuid) -> JobState {
        let Some((group, limit)) = self.jobs.get(&id).and_then(|j| j.step.concurrency.clone())
        else {
            return JobState::Scheduled;
        };
        if self.active_in_group(&group) < limit as usize {
            return JobState::Scheduled;
        }
        self.limited.entry(group).or_default().push_back(id);
        JobState::Limited
    }

    /// Give freed concurrency slots to the oldest `limited` jobs of each group.
    pub(super) fn release_groups(&mut self) {
        while let Some(group) = self.next_group_to_release() {
            while let Some(&next) = self.limited.get(&group).and_then(|q| q.front()) {
                let waiting = self
                    .jobs
                    .get(&next)
                    .filter(|j| j.state == JobState::Limited);
                let Some((build_id, limit)) =
                    waiting.and_then(|j| j.step.concurrency.as_ref().map(|c| (j.build_id, c.1)))
                else {
                    if let Some(queue) = self.limited.get_mut(&group) {
                        queue.pop_front();
                    }
                    continue;
                };
                if self.active_in_group(&group) >= limit as usize {
                    break;
                }
                if let Some(queue) = self.limited.get_mut(&group) {
                    queue.pop_front();
                }
                self.set_state(
                    next,
                    JobState::Scheduled,
                    Some(format!("concurrency group {group} has a free slot")),
                );
                self.settle(build_id);
            }
            if self.limited.get(&group).is_some_and(|q| q.is_empty()) {
                self.limited.remove(&group);
            }
        }
    }
}
