//! The limiter: each fleet's waiting jobs in priority order, and the caps that hold them
//! back — the fleet's `max_in_flight`, its launch rate, and the global cap. `admit` takes as
//! many jobs as the caps allow; `hold_reasons` says, per waiting job, which cap holds it.
//! Pure data and arithmetic, no I/O: time comes in as an argument, so the scheduler and the
//! simulator (`updraft sim`) hold jobs back by the very same rules.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

type Key = (Reverse<i64>, i64, Uuid);

/// How a fleet orders the jobs it holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PriorityOrder {
    /// Higher job priority first, then oldest first (Buildkite's dispatch order).
    #[default]
    JobPriority,
    /// Oldest first, ignoring job priority.
    Fifo,
}

/// One fleet's caps, as the limiter needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLimits {
    pub name: String,
    pub max_in_flight: u32,
    pub launches_per_minute: Option<u32>,
    pub order: PriorityOrder,
}

/// A launch-rate allowance that refills continuously, holding up to ten seconds' worth.
#[derive(Debug, Clone)]
struct RateBucket {
    per_minute: u32,
    tokens: f64,
    capacity: f64,
    last_ms: i64,
}

impl RateBucket {
    fn new(per_minute: u32, now_ms: i64) -> Self {
        let capacity = (per_minute as f64 / 6.0).max(1.0);
        RateBucket {
            per_minute,
            tokens: capacity,
            capacity,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = (now_ms - self.last_ms).max(0) as f64;
        self.tokens =
            (self.tokens + elapsed * self.per_minute as f64 / 60_000.0).min(self.capacity);
        self.last_ms = now_ms;
    }

    fn try_take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct FleetQueue {
    name: String,
    max_in_flight: u32,
    order: PriorityOrder,
    rate: Option<RateBucket>,
    waiting: BTreeSet<Key>,
    keys: HashMap<Uuid, Key>,
    in_flight: u32,
}

#[derive(Debug)]
pub struct Limiter {
    fleets: Vec<FleetQueue>,
    global_max: Option<u32>,
    global_in_flight: u32,
}

/// One fleet's numbers, for the status page and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLoad {
    pub name: String,
    pub in_flight: u32,
    pub max_in_flight: u32,
    pub waiting: usize,
}

impl Limiter {
    pub fn new(fleets: &[FleetLimits], global_max: Option<u32>, now_ms: i64) -> Self {
        let fleets = fleets
            .iter()
            .map(|f| FleetQueue {
                name: f.name.clone(),
                max_in_flight: f.max_in_flight,
                order: f.order,
                rate: f.launches_per_minute.map(|r| RateBucket::new(r, now_ms)),
                waiting: BTreeSet::new(),
                keys: HashMap::new(),
                in_flight: 0,
            })
            .collect();
        Limiter {
            fleets,
            global_max,
            global_in_flight: 0,
        }
    }

    pub fn enqueue(&mut self, fleet: usize, job: Uuid, priority: i64, scheduled_at_ms: i64) {
        let queue = &mut self.fleets[fleet];
        let priority = match queue.order {
            PriorityOrder::JobPriority => priority,
            PriorityOrder::Fifo => 0,
        };
        let key = (Reverse(priority), scheduled_at_ms, job);
        if queue.keys.insert(job, key).is_none() {
            queue.waiting.insert(key);
        }
    }

    /// Forget a waiting job (it vanished from Buildkite's scheduled list).
    pub fn remove_waiting(&mut self, fleet: usize, job: Uuid) -> bool {
        let queue = &mut self.fleets[fleet];
        match queue.keys.remove(&job) {
            Some(key) => queue.waiting.remove(&key),
            None => false,
        }
    }

    /// Count a launch slot as taken without going through the queue (jobs found in the
    /// ledger at start-up).
    pub fn occupy(&mut self, fleet: usize) {
        self.fleets[fleet].in_flight += 1;
        self.global_in_flight += 1;
    }

    pub fn release(&mut self, fleet: usize) {
        let queue = &mut self.fleets[fleet];
        queue.in_flight = queue.in_flight.saturating_sub(1);
        self.global_in_flight = self.global_in_flight.saturating_sub(1);
    }

    /// Take waiting jobs while the caps allow, highest priority first within a fleet and
    /// round-robin across fleets so one busy fleet cannot starve the others of the global
    /// cap. Each admitted job holds a slot until `release`.
    pub fn admit(&mut self, now_ms: i64) -> Vec<(usize, Uuid)> {
        let mut admitted = Vec::new();
        for queue in &mut self.fleets {
            if let Some(rate) = &mut queue.rate {
                rate.refill(now_ms);
            }
        }
        loop {
            let mut progressed = false;
            for (index, queue) in self.fleets.iter_mut().enumerate() {
                if self
                    .global_max
                    .is_some_and(|max| self.global_in_flight >= max)
                {
                    return admitted;
                }
                if queue.in_flight >= queue.max_in_flight {
                    continue;
                }
                let Some(&key) = queue.waiting.first() else {
                    continue;
                };
                if let Some(rate) = &mut queue.rate {
                    if !rate.try_take() {
                        continue;
                    }
                }
                queue.waiting.remove(&key);
                queue.keys.remove(&key.2);
                queue.in_flight += 1;
                self.global_in_flight += 1;
                admitted.push((index, key.2));
                progressed = true;
            }
            if !progressed {
                return admitted;
            }
        }
    }

    /// Why each still-waiting job waits.
    pub fn hold_reasons(&self) -> Vec<(Uuid, String)> {
        let mut out = Vec::new();
        for queue in &self.fleets {
            if queue.waiting.is_empty() {
                continue;
            }
            let reason = if queue.in_flight >= queue.max_in_flight {
                format!(
                    "fleet {} at max_in_flight {}/{}",
                    queue.name, queue.in_flight, queue.max_in_flight
                )
            } else if let Some(max) = self.global_max.filter(|max| self.global_in_flight >= *max) {
                format!(
                    "global max_in_flight {}/{max} reached",
                    self.global_in_flight
                )
            } else if let Some(rate) = &queue.rate {
                format!(
                    "fleet {} at launches_per_minute {}",
                    queue.name, rate.per_minute
                )
            } else {
                format!("fleet {}: waiting for its turn", queue.name)
            };
            out.extend(queue.waiting.iter().map(|key| (key.2, reason.clone())));
        }
        out
    }

    pub fn loads(&self) -> Vec<FleetLoad> {
        self.fleets
            .iter()
            .map(|q| FleetLoad {
                name: q.name.clone(),
                in_flight: q.in_flight,
                max_in_flight: q.max_in_flight,
                waiting: q.waiting.len(),
            })
            .collect()
    }

    pub fn in_flight(&self) -> u32 {
        self.global_in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(
        order: PriorityOrder,
        launches_per_minute: Option<u32>,
        global: Option<u32>,
    ) -> Limiter {
        let fleets = [
            FleetLimits {
                name: "linux".into(),
                max_in_flight: 2,
                launches_per_minute,
                order,
            },
            FleetLimits {
                name: "mac".into(),
                max_in_flight: 5,
                launches_per_minute: None,
                order: PriorityOrder::JobPriority,
            },
        ];
        Limiter::new(&fleets, global, 0)
    }

    #[test]
    fn max_in_flight_holds_jobs_and_says_so() {
        let mut l = limiter(PriorityOrder::JobPriority, None, None);
        let jobs: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for (i, job) in jobs.iter().enumerate() {
            l.enqueue(0, *job, 0, i as i64);
        }
        let admitted = l.admit(0);
        assert_eq!(admitted, vec![(0, jobs[0]), (0, jobs[1])]);
        assert_eq!(
            l.hold_reasons(),
            vec![(jobs[2], "fleet linux at max_in_flight 2/2".to_string())]
        );
        l.release(0);
        assert_eq!(l.admit(0), vec![(0, jobs[2])]);
    }

    #[test]
    fn higher_priority_goes_first_then_oldest() {
        let mut l = limiter(PriorityOrder::JobPriority, None, None);
        let (low, high, old) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        l.enqueue(0, low, 0, 1);
        l.enqueue(0, high, 10, 5);
        l.enqueue(0, old, 0, 0);
        assert_eq!(l.admit(0), vec![(0, high), (0, old)]);
    }

    #[test]
    fn fifo_ignores_priority() {
        let mut l = limiter(PriorityOrder::Fifo, None, None);
        let (first, urgent) = (Uuid::new_v4(), Uuid::new_v4());
        l.enqueue(0, first, 0, 1);
        l.enqueue(0, urgent, 10, 2);
        assert_eq!(l.admit(0)[0], (0, first));
    }

    #[test]
    fn the_global_cap_is_shared_round_robin() {
        let mut l = limiter(PriorityOrder::JobPriority, None, Some(2));
        let a: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
        let b: Vec<Uuid> = (0..2).map(|_| Uuid::new_v4()).collect();
        for job in &a {
            l.enqueue(0, *job, 0, 0);
        }
        for job in &b {
            l.enqueue(1, *job, 0, 0);
        }
        let admitted = l.admit(0);
        assert_eq!(admitted.len(), 2);
        assert_eq!(admitted.iter().filter(|(f, _)| *f == 1).count(), 1);
        assert!(l
            .hold_reasons()
            .iter()
            .all(|(_, r)| r == "global max_in_flight 2/2 reached"));
    }

    #[test]
    fn launch_rate_refills_over_time() {
        let mut l = limiter(PriorityOrder::JobPriority, Some(6), None);
        for i in 0..3 {
            l.enqueue(0, Uuid::new_v4(), 0, i);
        }
        assert_eq!(l.admit(0).len(), 1);
        assert!(l.hold_reasons()[0].1.contains("launches_per_minute 6"));
        assert_eq!(l.admit(5_000).len(), 0);
        assert_eq!(l.admit(10_000).len(), 1);
    }
}
