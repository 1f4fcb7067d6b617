//! The watch cache: every launch of this scheduler, as its watched Job and pods (stripped, see
//! [`crate::slim`]), plus the launches created by this process that the watch has not shown
//! yet. `list()` reads it instead of the API server, and merges those just-created launches
//! in as `Pending`: the reconciler takes a launch missing from a listing as gone, and watch
//! events can lag a create by more than its margin.
//!
//! Each watch stream (Jobs or pods, per namespace) (re)lists with a generation number; when a
//! relist is done, whatever of that stream's namespace the relist did not show is dropped, so
//! deletions missed while the stream was down are not kept forever. The std mutex is never
//! held across an await.

use crate::slim::{JobView, PodView, SlimJob, SlimPod};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::watch;
use updraft_backends::LaunchName;

/// Which stream an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Jobs,
    Pods,
}

/// One launch as watched.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub job: Option<JobView>,
    job_generation: u32,
    pub pods: Vec<(PodView, u32)>,
}

impl Entry {
    pub fn pods(&self) -> Vec<PodView> {
        self.pods.iter().map(|(pod, _)| pod.clone()).collect()
    }
}

/// A launch this process created that the watch may not have shown yet.
#[derive(Debug, Clone)]
pub struct Created {
    pub fleet: String,
    pub at: DateTime<Utc>,
    since: Instant,
}

/// A Job this process deleted: its uid and namespace.
struct Deleted {
    uid: Box<str>,
    namespace: Box<str>,
}

#[derive(Default)]
struct State {
    launches: HashMap<LaunchName, Entry>,
    created: HashMap<LaunchName, Created>,
    /// Jobs this process deleted, by uid, until the watch confirms it: an event about the
    /// deleted Job that arrives late must not bring it back (a relaunch would then be taken
    /// for a launch that exists).
    /// (A relist ends these: after it, no event older than the deletion can arrive.)
    deleted: HashMap<LaunchName, Deleted>,
    /// The current (re)list generation of each stream, and when it began.
    generations: HashMap<(Kind, Box<str>), (u32, Instant)>,
    /// The streams that have finished a list at least once.
    listed: std::collections::HashSet<(Kind, Box<str>)>,
}

/// The cache. Cheap to share behind an `Arc`.
pub struct Cache {
    state: Mutex<State>,
    /// How many streams have finished their first list.
    synced: watch::Sender<usize>,
    streams: usize,
}

impl Cache {
    /// A cache fed by `streams` watch streams; ready once each has listed once.
    pub fn new(streams: usize) -> Cache {
        Cache {
            state: Mutex::new(State::default()),
            synced: watch::Sender::new(0),
            streams,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a few assignments that leave the maps consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves once every stream has listed once.
    pub async fn ready(&self) {
        let mut synced = self.synced.subscribe();
        let streams = self.streams;
        let _ = synced.wait_for(|n| *n >= streams).await;
    }

    pub fn is_ready(&self) -> bool {
        *self.synced.borrow() >= self.streams
    }

    /// A stream starts a (re)list.
    pub fn begin_list(&self, kind: Kind, namespace: &str) {
        let mut state = self.lock();
        let slot = state
            .generations
            .entry((kind, namespace.into()))
            .or_insert((0, Instant::now()));
        slot.0 = slot.0.wrapping_add(1);
        slot.1 = Instant::now();
    }

    /// A stream finished a (re)list: drop what it did not show.
    pub fn end_list(&self, kind: Kind, namespace: &str) {
        let mut state = self.lock();
        let Some(&(generation, started)) = state.generations.get(&(kind, namespace.into())) else {
            return;
        };
        let state = &mut *state;
        for entry in state.launches.values_mut() {
            match kind {
                Kind::Jobs => {
                    if entry
                        .job
                        .as_ref()
                        .is_some_and(|j| &*j.namespace == namespace)
                        && entry.job_generation != generation
                    {
                        entry.job = None;
                    }
                }
                Kind::Pods => {
                    let in_namespace = entry
                        .job
                        .as_ref()
                        .is_none_or(|j| &*j.namespace == namespace);
                    if in_namespace {
                        entry.pods.retain(|(_, seen)| *seen == generation);
                    }
                }
            }
        }
        state.launches.retain(|_, entry| keep(entry));
        if kind == Kind::Jobs {
            // A launch created before this list began and not in it was deleted meanwhile.
            state.created.retain(|_, created| created.since >= started);
            state
                .deleted
                .retain(|_, deleted| &*deleted.namespace != namespace);
        }
        state.listed.insert((kind, namespace.into()));
        let listed = state.listed.len();
        self.synced.send_replace(listed);
    }

    /// A Job was added or changed.
    pub fn apply_job(&self, job: SlimJob) {
        let SlimJob {
            launch: Some(name),
            view,
            ..
        } = job
        else {
            return;
        };
        let mut state = self.lock();
        match state.deleted.get(&name) {
            Some(deleted) if deleted.uid == view.uid => return,
            Some(_) => {
                state.deleted.remove(&name);
            }
            None => {}
        }
        let generation = state
            .generations
            .get(&(Kind::Jobs, view.namespace.clone()))
            .map_or(0, |g| g.0);
        state.created.remove(&name);
        let entry = state.launches.entry(name).or_default();
        entry.job = Some(view);
        entry.job_generation = generation;
    }

    /// A Job was deleted.
    pub fn delete_job(&self, job: SlimJob) {
        let Some(name) = job.launch else {
            return;
        };
        let mut state = self.lock();
        if state
            .deleted
            .get(&name)
            .is_some_and(|d| d.uid == job.view.uid)
        {
            state.deleted.remove(&name);
        }
        state.created.remove(&name);
        if let Some(entry) = state.launches.get_mut(&name) {
            entry.job = None;
            if !keep(entry) {
                state.launches.remove(&name);
            }
        }
    }

    /// A pod was added or changed.
    pub fn apply_pod(&self, namespace: &str, pod: SlimPod) {
        let SlimPod {
            launch: Some(name),
            mut view,
            ..
        } = pod
        else {
            return;
        };
        let mut state = self.lock();
        let generation = state
            .generations
            .get(&(Kind::Pods, namespace.into()))
            .map_or(0, |g| g.0);
        let entry = state.launches.entry(name).or_default();
        match entry.pods.iter_mut().find(|(p, _)| p.name == view.name) {
            Some((known, seen)) => {
                keep_informative_message(known, &mut view);
                *known = view;
                *seen = generation;
            }
            None => {
                // Nearly every launch has one pod: a Vec's first growth would make room for
                // four, and with thousands of launches that spare room is most of the cache.
                entry.pods.reserve_exact(1);
                entry.pods.push((view, generation));
            }
        }
    }

    /// A pod was deleted: kept, marked gone, to explain how its Job ends.
    pub fn delete_pod(&self, pod: SlimPod) {
        let Some(name) = &pod.launch else {
            return;
        };
        let mut state = self.lock();
        if let Some(entry) = state.launches.get_mut(name) {
            if let Some((known, _)) = entry.pods.iter_mut().find(|(p, _)| p.name == pod.view.name) {
                known.gone = true;
            }
            if !keep(entry) {
                state.launches.remove(name);
            }
        }
    }

    /// This process created a launch; it is listed until the watch shows it (or its deletion).
    pub fn created(&self, name: LaunchName, fleet: &str) {
        self.lock().created.insert(
            name,
            Created {
                fleet: fleet.to_string(),
                at: Utc::now(),
                since: Instant::now(),
            },
        );
    }

    /// This process deleted a launch: nothing of it is listed from now on, and late watch
    /// events about that Job are ignored.
    pub fn forget(&self, name: &LaunchName) {
        let mut state = self.lock();
        state.created.remove(name);
        let Some(entry) = state.launches.get_mut(name) else {
            return;
        };
        if let Some(job) = entry.job.take() {
            let deleted = Deleted {
                uid: job.uid,
                namespace: job.namespace,
            };
            state.deleted.insert(name.clone(), deleted);
        }
        let entry_kept = state.launches.get(name).is_some_and(keep);
        if !entry_kept {
            state.launches.remove(name);
        }
    }

    /// Whether a launch of this name exists and is not going away (watched, or just created).
    pub fn knows(&self, name: &LaunchName) -> bool {
        let state = self.lock();
        state.created.contains_key(name)
            || state
                .launches
                .get(name)
                .and_then(|e| e.job.as_ref())
                .is_some_and(|job| !job.deleting)
    }

    /// A launch's watched Job and pods.
    pub fn entry(&self, name: &LaunchName) -> Option<Entry> {
        self.lock()
            .launches
            .get(name)
            .filter(|e| e.job.is_some())
            .cloned()
    }

    /// Map every launch with a Job, and every just-created one, through `watched` and
    /// `created`, under one lock.
    pub fn map<T>(
        &self,
        mut watched: impl FnMut(&LaunchName, &JobView, &[(PodView, u32)]) -> T,
        mut created: impl FnMut(&LaunchName, &Created) -> T,
    ) -> Vec<T> {
        let state = self.lock();
        let mut out: Vec<T> = state
            .launches
            .iter()
            .filter_map(|(name, entry)| Some(watched(name, entry.job.as_ref()?, &entry.pods)))
            .collect();
        out.extend(state.created.iter().map(|(name, c)| created(name, c)));
        out
    }

    /// Roughly how many bytes the cache holds (its entries and their strings): what stays flat
    /// however large the watched objects are.
    pub fn footprint(&self) -> usize {
        let state = self.lock();
        let strings = |parts: &[&str]| parts.iter().map(|s| s.len()).sum::<usize>();
        let entries: usize = state
            .launches
            .iter()
            .map(|(name, entry)| {
                let job = entry.job.as_ref().map_or(0, |job| {
                    let outcome = match &job.outcome {
                        Some(crate::slim::JobOutcome::Failed { reason, message }) => {
                            reason.len() + message.len()
                        }
                        _ => 0,
                    };
                    strings(&[&job.namespace, &job.fleet]) + outcome
                });
                let pods: usize = entry
                    .pods
                    .iter()
                    .map(|(pod, _)| {
                        let waiting = pod.waiting.as_ref().map_or(0, |w| {
                            strings(&[&w.container, &w.image, &w.reason, &w.message])
                        });
                        std::mem::size_of::<(PodView, u32)>()
                            + pod.name.len()
                            + pod.reason.as_deref().map_or(0, str::len)
                            + pod.message.as_deref().map_or(0, str::len)
                            + pod.unschedulable.as_deref().map_or(0, str::len)
                            + waiting
                    })
                    .sum();
                std::mem::size_of::<(LaunchName, Entry)>() + name.as_str().len() + job + pods
            })
            .sum();
        entries + state.created.len() * std::mem::size_of::<(LaunchName, Created)>()
    }

    /// How many launches have a watched Job, and how many pods are kept.
    pub fn sizes(&self) -> (usize, usize) {
        let state = self.lock();
        let jobs = state.launches.values().filter(|e| e.job.is_some()).count();
        let pods = state.launches.values().map(|e| e.pods.len()).sum();
        (jobs, pods)
    }
}

/// An entry is worth keeping while it has a Job or a live pod.
fn keep(entry: &Entry) -> bool {
    entry.job.is_some() || entry.pods.iter().any(|(p, _)| !p.gone)
}

/// A container stuck since an earlier event stays stuck since then. And the kubelet's first
/// message about a failing pull names the cause ("not found", "unauthorized"); later ones
/// only say it is backing off: keep the informative one.
fn keep_informative_message(known: &PodView, fresh: &mut PodView) {
    if let (Some(old), Some(new)) = (&known.waiting, &mut fresh.waiting) {
        if old.container != new.container {
            return;
        }
        new.since = old.since;
        if new.message.starts_with("Back-off") && !old.message.starts_with("Back-off") {
            new.message = old.message.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn job(id: Uuid, namespace: &str) -> SlimJob {
        serde_json::from_value(
            json!({"metadata": {"name": format!("updraft-{id}"), "namespace": namespace, "uid": format!("uid-{id}"),
            "labels": {"buildkite.com/job-uuid": id.to_string(), "updraft.dev/fleet": "linux"}}}),
        )
        .unwrap()
    }

    fn pod(id: Uuid, name: &str, waiting: Option<&str>) -> SlimPod {
        let mut status = json!({"phase": "Pending"});
        if let Some(message) = waiting {
            status["containerStatuses"] = json!([{"name": "agent", "image": "x", "state": {"waiting": {"reason": "ImagePullBackOff", "message": message}}}]);
        }
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ci",
            "labels": {"buildkite.com/job-uuid": id.to_string()}}, "status": status}))
        .unwrap()
    }

    fn names(cache: &Cache) -> Vec<String> {
        let mut names = cache.map(
            |name, _, _| name.to_string(),
            |name, _| format!("{name} (created)"),
        );
        names.sort();
        names
    }

    #[test]
    fn just_created_launches_are_listed_until_the_watch_shows_them() {
        let cache = Cache::new(1);
        let id = Uuid::new_v4();
        cache.created(LaunchName::for_job(id), "linux");
        assert_eq!(names(&cache), [format!("updraft-{id} (created)")]);
        cache.apply_job(job(id, "ci"));
        assert_eq!(names(&cache), [format!("updraft-{id}")]);
        cache.delete_job(job(id, "ci"));
        assert!(names(&cache).is_empty());
    }

    #[test]
    fn a_relist_drops_what_it_no_longer_shows_in_its_namespace_only() {
        let cache = Cache::new(2);
        let (kept, dropped, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        cache.begin_list(Kind::Jobs, "ci");
        cache.apply_job(job(kept, "ci"));
        cache.apply_job(job(dropped, "ci"));
        cache.end_list(Kind::Jobs, "ci");
        assert!(!cache.is_ready());
        cache.begin_list(Kind::Jobs, "gpu");
        cache.apply_job(job(other, "gpu"));
        cache.end_list(Kind::Jobs, "gpu");
        assert!(cache.is_ready());

        let created_before = Uuid::new_v4();
        cache.created(LaunchName::for_job(created_before), "linux");
        std::thread::sleep(std::time::Duration::from_millis(2));
        cache.begin_list(Kind::Jobs, "ci");
        let created_during = Uuid::new_v4();
        cache.created(LaunchName::for_job(created_during), "linux");
        cache.apply_job(job(kept, "ci"));
        cache.end_list(Kind::Jobs, "ci");
        let mut expected = vec![
            format!("updraft-{kept}"),
            format!("updraft-{other}"),
            format!("updraft-{created_during} (created)"),
        ];
        expected.sort();
        assert_eq!(names(&cache), expected);
    }

    #[test]
    fn a_job_this_process_deleted_stays_gone_whatever_late_events_say_but_a_relaunch_shows() {
        let cache = Cache::new(1);
        let id = Uuid::new_v4();
        let name = LaunchName::for_job(id);
        cache.apply_job(job(id, "ci"));
        assert!(cache.knows(&name));
        cache.forget(&name);
        assert!(!cache.knows(&name));
        cache.apply_job(job(id, "ci"));
        assert!(!cache.knows(&name), "a late event about the deleted Job");
        let mut relaunched = job(id, "ci");
        relaunched.view.uid = "a-new-uid".into();
        cache.apply_job(relaunched);
        assert!(cache.knows(&name), "the relaunched Job has a new uid");
    }

    #[test]
    fn deleted_pods_are_kept_as_gone_while_their_job_is() {
        let cache = Cache::new(1);
        let id = Uuid::new_v4();
        cache.apply_job(job(id, "ci"));
        cache.apply_pod("ci", pod(id, "p1", None));
        cache.delete_pod(pod(id, "p1", None));
        let entry = cache.entry(&LaunchName::for_job(id)).unwrap();
        assert!(entry.pods()[0].gone);
        cache.delete_job(job(id, "ci"));
        assert_eq!(cache.sizes(), (0, 0));
    }

    #[test]
    fn the_informative_pull_message_survives_the_back_off_ones() {
        let cache = Cache::new(1);
        let id = Uuid::new_v4();
        cache.apply_job(job(id, "ci"));
        cache.apply_pod(
            "ci",
            pod(id, "p1", Some("failed to pull image \"x\": not found")),
        );
        cache.apply_pod("ci", pod(id, "p1", Some("Back-off pulling image \"x\"")));
        let entry = cache.entry(&LaunchName::for_job(id)).unwrap();
        assert_eq!(
            &*entry.pods()[0].waiting.clone().unwrap().message,
            "failed to pull image \"x\": not found"
        );
    }
}
