//! The simulated outside world: Buildkite's view of the jobs, the backend's launches, each
//! launch's agent, and every outside call the scheduler has made and not yet had answered.
//! The driver decides when each call lands (and whether it fails before or after its effect)
//! and when each agent moves; the world applies the effects and keeps the invariants' books,
//! recording a violation the moment the scheduler does something it must never do.

use std::collections::{BTreeMap, BTreeSet};
use updraft_backends::{BackendError, LaunchName, LaunchOutcome, LaunchPhase, LaunchStatus};
use updraft_buildkite::stacks::{
    IssuedTokens, JobAcquisitionToken, JobStates, NotificationResult, Reservation, StackJob,
};
use updraft_buildkite::ApiError;
use updraft_model::{JobState, Secret};
use uuid::Uuid;

/// How long a reservation lasts in the simulated Buildkite (the config's `reservation_expiry`).
pub const RESERVATION_MS: i64 = 600_000;
/// How long after its agent dies Buildkite fails a running job.
pub const LOST_AGENT_MS: i64 = 30_000;

/// One Buildkite job.
#[derive(Debug, Clone)]
pub struct SimJob {
    pub state: JobState,
    pub reserved_until_ms: i64,
    /// Bumped by every token issued; an agent's token is valid only for the latest.
    pub token_epoch: u64,
    pub token_valid: bool,
    pub acquires: u32,
    /// The simulation hurt this job (killed or refused a launch of it): it may end failed.
    pub harmed: bool,
    /// When its agent died while holding it.
    pub lost_at_ms: Option<i64>,
}

/// Where a launch's agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Booting,
    /// Booted, about to acquire.
    Ready,
    /// Holds the job (accepted or running).
    Holding,
    /// Gone: the launch has ended.
    Gone,
}

/// One launch the backend runs.
#[derive(Debug, Clone)]
pub struct SimLaunch {
    pub fleet: String,
    pub phase: LaunchPhase,
    pub agent: Agent,
    pub started_at_ms: i64,
    /// The token epoch it was launched with.
    pub token_epoch: u64,
    pub stop_requested: bool,
}

/// An outside call in flight.
#[derive(Debug, Clone)]
pub enum Call {
    Reserve(Vec<Uuid>),
    IssueTokens(Vec<Uuid>),
    JobDetails(Uuid),
    JobStates(Vec<Uuid>),
    Finish(Uuid, String),
    Notify,
    Launch { job: Uuid, fleet: String },
    Stop(Uuid),
    Delete(Uuid),
    List,
}

/// A call's answer.
#[derive(Debug)]
pub enum Reply {
    Reserve(Result<Reservation, ApiError>),
    Tokens(Result<IssuedTokens, ApiError>),
    Details(Result<StackJob, ApiError>),
    States(Result<JobStates, ApiError>),
    Finished(Result<(), ApiError>),
    Notified(Result<NotificationResult, ApiError>),
    Launched(Result<LaunchOutcome, BackendError>),
    Done(Result<(), BackendError>),
    Listed(Result<Vec<LaunchStatus>, BackendError>),
}

/// How a call lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    /// Its effect happens and the caller hears of it.
    Ok,
    /// Refused before any effect (429, 503, throttling).
    Refused,
    /// Its effect happens but the answer is lost (a timeout).
    LostAnswer,
    /// The backend answers "at capacity" (launches only).
    AtCapacity,
    /// The backend refuses the spec (launches only).
    Invalid,
}

struct InFlight {
    call: Call,
    reply: Option<Reply>,
}

#[derive(Default)]
pub struct World {
    pub now_ms: i64,
    pub jobs: BTreeMap<Uuid, SimJob>,
    pub launches: BTreeMap<Uuid, SimLaunch>,
    in_flight: BTreeMap<u64, InFlight>,
    next_call: u64,
    /// Jobs the backend refused as invalid, with how many launches were asked after that.
    refused: BTreeMap<Uuid, u32>,
    /// Jobs failed through the Stacks API, by the scheduler.
    finished_by_scheduler: BTreeSet<Uuid>,
    pub violations: Vec<String>,
    pub log: Vec<String>,
    pub verbose: bool,
}

fn api_error(status: u16, message: &str) -> ApiError {
    ApiError::Status {
        method: reqwest::Method::POST,
        path: "/v3/stacks/sim".into(),
        status: reqwest::StatusCode::from_u16(status).expect("a valid status"),
        message: message.into(),
        retry_after: None,
    }
}

/// The answer a caller hears: lost (a timeout) or as given.
fn answered<T>(landing: Landing, result: Result<T, ApiError>) -> Result<T, ApiError> {
    if landing == Landing::LostAnswer {
        Err(timeout())
    } else {
        result
    }
}

fn timeout() -> ApiError {
    ApiError::Network {
        method: reqwest::Method::POST,
        path: "/v3/stacks/sim".into(),
        detail: "timed out".into(),
    }
}

fn unavailable(detail: &str) -> BackendError {
    BackendError::Unavailable {
        backend: "sim",
        detail: detail.into(),
    }
}

/// A job an agent holds (or is being stopped with one holding it).
pub fn held(state: JobState) -> bool {
    matches!(
        state,
        JobState::Assigned
            | JobState::Accepted
            | JobState::Running
            | JobState::Canceling
            | JobState::TimingOut
    )
}

impl World {
    /// A world whose clock starts at `now_ms`.
    pub fn at(now_ms: i64, verbose: bool) -> World {
        World {
            now_ms,
            verbose,
            ..World::default()
        }
    }

    /// Keep a line of the run's log (only when replaying verbosely: formatting every step of
    /// ten thousand runs would cost more than running them).
    pub fn note(&mut self, line: impl FnOnce() -> String) {
        if self.verbose {
            let line = line();
            self.log.push(format!("{:>8} {line}", self.now_ms));
        }
    }

    fn violate(&mut self, what: String) {
        let line = format!("VIOLATION {what}");
        self.note(|| line);
        self.violations.push(what);
    }

    pub fn register(&mut self, call: Call) -> u64 {
        self.next_call += 1;
        self.in_flight
            .insert(self.next_call, InFlight { call, reply: None });
        self.next_call
    }

    pub fn take_reply(&mut self, id: u64) -> Option<Reply> {
        let reply = self.in_flight.get_mut(&id)?.reply.take()?;
        self.in_flight.remove(&id);
        Some(reply)
    }

    /// Calls made and not yet answered.
    pub fn unanswered(&self) -> Vec<u64> {
        self.in_flight
            .iter()
            .filter(|(_, f)| f.reply.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn is_launch(&self, id: u64) -> bool {
        matches!(
            self.in_flight.get(&id).map(|f| &f.call),
            Some(Call::Launch { .. })
        )
    }

    /// The scheduler crashed: its calls' answers go nowhere, though some of their effects
    /// happened (`landed`).
    pub fn forget_calls(&mut self, landed: impl Fn(u64) -> bool) {
        let ids: Vec<u64> = self.in_flight.keys().copied().collect();
        for id in ids {
            let in_flight = self.in_flight.remove(&id).expect("listed");
            if in_flight.reply.is_none() && landed(id) {
                self.note(|| format!("crash: {:?} landed unanswered", in_flight.call));
                self.answer(in_flight.call, Landing::LostAnswer);
            }
        }
    }

    /// Let call `id` land.
    pub fn land(&mut self, id: u64, landing: Landing) {
        let Some(call) = self.in_flight.get(&id).map(|f| f.call.clone()) else {
            return;
        };
        self.note(|| format!("land {call:?} {landing:?}"));
        let reply = self.answer(call, landing);
        if let Some(in_flight) = self.in_flight.get_mut(&id) {
            in_flight.reply = Some(reply);
        }
    }

    fn answer(&mut self, call: Call, landing: Landing) -> Reply {
        let effect = matches!(landing, Landing::Ok | Landing::LostAnswer);
        match call {
            Call::Reserve(jobs) => {
                if !effect {
                    return Reply::Reserve(Err(api_error(429, "rate limited")));
                }
                let reservation = self.reserve(&jobs);
                Reply::Reserve(answered(landing, Ok(reservation)))
            }
            Call::IssueTokens(jobs) => {
                if !effect {
                    return Reply::Tokens(Err(api_error(503, "unavailable")));
                }
                let issued = self.issue(&jobs);
                Reply::Tokens(answered(landing, Ok(issued)))
            }
            Call::JobDetails(job) => Reply::Details(if effect {
                answered(
                    landing,
                    Ok(StackJob {
                        id: job,
                        env: Default::default(),
                        command: Some("make test".into()),
                    }),
                )
            } else {
                Err(api_error(503, "unavailable"))
            }),
            Call::JobStates(jobs) => Reply::States(if effect {
                let states = jobs
                    .iter()
                    .filter_map(|j| Some((*j, self.jobs.get(j)?.state)))
                    .collect();
                answered(
                    landing,
                    Ok(JobStates {
                        states,
                        unreadable: Default::default(),
                    }),
                )
            } else {
                Err(api_error(429, "rate limited"))
            }),
            Call::Finish(job, detail) => {
                if !effect {
                    return Reply::Finished(Err(api_error(503, "unavailable")));
                }
                let result = self.finish(job, &detail);
                Reply::Finished(if result.is_ok() {
                    answered(landing, result)
                } else {
                    result
                })
            }
            Call::Notify => Reply::Notified(if effect {
                answered(landing, Ok(NotificationResult::default()))
            } else {
                Err(api_error(429, "rate limited"))
            }),
            Call::Launch { job, fleet } => Reply::Launched(match landing {
                Landing::Refused => Err(unavailable("throttled")),
                Landing::AtCapacity => Err(BackendError::AtCapacity {
                    backend: "sim",
                    detail: "no room".into(),
                }),
                Landing::Invalid => {
                    self.refuse(job);
                    Err(BackendError::Invalid {
                        backend: "sim",
                        name: LaunchName::for_job(job).to_string(),
                        detail: "the spec names an image that is not allowed".into(),
                    })
                }
                Landing::Ok | Landing::LostAnswer => {
                    let outcome = self.launch(job, fleet);
                    if landing == Landing::LostAnswer {
                        Err(unavailable("timed out"))
                    } else {
                        Ok(outcome)
                    }
                }
            }),
            Call::Stop(job) => Reply::Done(if effect {
                self.stop(job);
                if landing == Landing::LostAnswer {
                    Err(unavailable("timed out"))
                } else {
                    Ok(())
                }
            } else {
                Err(unavailable("throttled"))
            }),
            Call::Delete(job) => Reply::Done(if effect {
                self.delete(job);
                if landing == Landing::LostAnswer {
                    Err(unavailable("timed out"))
                } else {
                    Ok(())
                }
            } else {
                Err(unavailable("throttled"))
            }),
            Call::List => Reply::Listed(if effect && landing == Landing::Ok {
                Ok(self.list())
            } else {
                Err(unavailable("throttled"))
            }),
        }
    }

    fn reserve(&mut self, jobs: &[Uuid]) -> Reservation {
        let mut reservation = Reservation::default();
        for id in jobs {
            let until = self.now_ms + RESERVATION_MS;
            match self.jobs.get_mut(id) {
                Some(job) if matches!(job.state, JobState::Scheduled | JobState::Reserved) => {
                    job.state = JobState::Reserved;
                    job.reserved_until_ms = until;
                    reservation.reserved.push(*id);
                }
                _ => reservation.not_reserved.push(*id),
            }
        }
        reservation
    }

    fn issue(&mut self, jobs: &[Uuid]) -> IssuedTokens {
        let mut issued = IssuedTokens::default();
        for id in jobs {
            match self.jobs.get_mut(id) {
                Some(job) if job.state == JobState::Reserved => {
                    job.token_epoch += 1;
                    job.token_valid = true;
                    issued.job_acquisition_tokens.push(JobAcquisitionToken {
                        job_uuid: *id,
                        job_acquisition_token: Secret::new(format!("jat-{}", job.token_epoch)),
                        expires_at: None,
                    });
                }
                _ => issued.not_issued.push(*id),
            }
        }
        issued
    }

    fn finish(&mut self, id: Uuid, detail: &str) -> Result<(), ApiError> {
        let Some(job) = self.jobs.get_mut(&id) else {
            return Err(api_error(404, "no such job"));
        };
        if held(job.state) {
            let state = job.state;
            self.violate(format!(
                "finish for job {id} while an agent holds it ({state}): {detail}"
            ));
            return Err(api_error(422, "an agent has the job"));
        }
        if job.state.is_terminal() {
            return Err(api_error(422, "the job has finished"));
        }
        job.state = JobState::Failed;
        job.token_valid = false;
        let harmed = job.harmed;
        self.finished_by_scheduler.insert(id);
        if !harmed {
            self.violate(format!(
                "healthy job {id} failed by the scheduler: {detail}"
            ));
        }
        Ok(())
    }

    fn refuse(&mut self, id: Uuid) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.harmed = true;
        }
        self.refused.entry(id).or_insert(0);
    }

    fn launch(&mut self, id: Uuid, fleet: String) -> LaunchOutcome {
        if self.launches.contains_key(&id) {
            return LaunchOutcome::AlreadyExists;
        }
        if let Some(after) = self.refused.get_mut(&id) {
            *after += 1;
            self.violate(format!(
                "job {id} launched again after the backend refused it"
            ));
        }
        let epoch = self.jobs.get(&id).map_or(0, |j| j.token_epoch);
        self.launches.insert(
            id,
            SimLaunch {
                fleet,
                phase: LaunchPhase::Pending,
                agent: Agent::Booting,
                started_at_ms: self.now_ms,
                token_epoch: epoch,
                stop_requested: false,
            },
        );
        LaunchOutcome::Started
    }

    fn stop(&mut self, id: Uuid) {
        let Some(launch) = self.launches.get_mut(&id) else {
            return;
        };
        launch.stop_requested = true;
        let holding = launch.agent == Agent::Holding;
        let job = self.jobs.get(&id).cloned();
        if let Some(job) = job {
            if holding && !job.state.is_stopping() && !job.state.is_terminal() && !job.harmed {
                self.violate(format!(
                    "stopped the launch of healthy job {id} ({})",
                    job.state
                ));
            }
        }
    }

    fn delete(&mut self, id: Uuid) {
        let Some(launch) = self.launches.get(&id) else {
            return;
        };
        if !launch.phase.is_finished() {
            let (phase, agent) = (launch.phase.clone(), launch.agent);
            self.violate(format!(
                "deleted the live launch of job {id} ({phase:?}, {agent:?})"
            ));
        }
        self.launches.remove(&id);
    }

    fn list(&self) -> Vec<LaunchStatus> {
        self.launches
            .iter()
            .map(|(id, launch)| LaunchStatus {
                name: LaunchName::for_job(*id),
                fleet: launch.fleet.clone(),
                phase: launch.phase.clone(),
                started_at: chrono::DateTime::from_timestamp_millis(launch.started_at_ms)
                    .unwrap_or_default(),
                detail: None,
            })
            .collect()
    }

    /// A new job scheduled on the queue.
    pub fn schedule(&mut self, id: Uuid) {
        self.note(|| format!("schedule {id}"));
        self.jobs.insert(
            id,
            SimJob {
                state: JobState::Scheduled,
                reserved_until_ms: 0,
                token_epoch: 0,
                token_valid: false,
                acquires: 0,
                harmed: false,
                lost_at_ms: None,
            },
        );
    }

    /// Move one launch's agent one step (boot, acquire, start, finish, obey a stop).
    pub fn step_agent(&mut self, id: Uuid) {
        let Some(launch) = self.launches.get(&id).cloned() else {
            return;
        };
        let Some(job) = self.jobs.get(&id).cloned() else {
            return;
        };
        let end = |world: &mut World, phase: LaunchPhase| {
            if let Some(launch) = world.launches.get_mut(&id) {
                launch.phase = phase;
                launch.agent = Agent::Gone;
            }
        };
        if launch.agent == Agent::Gone {
            return;
        }
        if launch.stop_requested {
            if launch.agent == Agent::Holding {
                let state = if job.state == JobState::Canceling {
                    JobState::Canceled
                } else {
                    JobState::Failed
                };
                self.set_state(id, state);
            }
            self.note(|| format!("agent of {id} stops"));
            return end(
                self,
                LaunchPhase::Failed {
                    reason: "stopped".into(),
                },
            );
        }
        match launch.agent {
            Agent::Booting => {
                if let Some(launch) = self.launches.get_mut(&id) {
                    launch.agent = Agent::Ready;
                    launch.phase = LaunchPhase::Running;
                }
            }
            Agent::Ready => {
                let can = matches!(job.state, JobState::Scheduled | JobState::Reserved)
                    && job.token_valid
                    && job.token_epoch == launch.token_epoch;
                if can {
                    self.note(|| format!("agent of {id} acquires"));
                    let job = self.jobs.get_mut(&id).expect("present");
                    job.acquires += 1;
                    job.token_valid = false;
                    job.state = JobState::Accepted;
                    if job.acquires > 1 {
                        self.violate(format!("job {id} acquired twice"));
                    }
                    if let Some(launch) = self.launches.get_mut(&id) {
                        launch.agent = Agent::Holding;
                    }
                } else {
                    self.note(|| format!("agent of {id} cannot acquire ({})", job.state));
                    end(
                        self,
                        LaunchPhase::Failed {
                            reason: "exit 27: the job could not be acquired".into(),
                        },
                    );
                }
            }
            Agent::Holding => match job.state {
                JobState::Accepted => self.set_state(id, JobState::Running),
                JobState::Running => {
                    self.set_state(id, JobState::Passed);
                    end(self, LaunchPhase::Succeeded);
                }
                JobState::Canceling => {
                    self.set_state(id, JobState::Canceled);
                    end(self, LaunchPhase::Succeeded);
                }
                _ => end(self, LaunchPhase::Succeeded),
            },
            Agent::Gone => {}
        }
    }

    /// The simulation kills a launch (a crashed process, an evicted pod, a lost node).
    pub fn kill(&mut self, id: Uuid) {
        let Some(launch) = self.launches.get_mut(&id) else {
            return;
        };
        if launch.agent == Agent::Gone {
            return;
        }
        let holding = launch.agent == Agent::Holding;
        launch.agent = Agent::Gone;
        launch.phase = LaunchPhase::Failed {
            reason: "killed".into(),
        };
        self.note(|| format!("kill launch of {id} (holding: {holding})"));
        let now = self.now_ms;
        if let Some(job) = self.jobs.get_mut(&id) {
            job.harmed = true;
            if holding {
                job.lost_at_ms = Some(now);
            }
        }
    }

    /// The platform refuses a pending launch (an image that cannot be pulled).
    pub fn refuse_pending(&mut self, id: Uuid) {
        let Some(launch) = self.launches.get_mut(&id) else {
            return;
        };
        if launch.agent != Agent::Booting {
            return;
        }
        launch.agent = Agent::Gone;
        launch.phase = LaunchPhase::Refused {
            reason: "image cannot be pulled".into(),
        };
        self.note(|| format!("refuse pending launch of {id}"));
        if let Some(job) = self.jobs.get_mut(&id) {
            job.harmed = true;
        }
    }

    /// A person cancels the job.
    pub fn cancel(&mut self, id: Uuid) {
        let Some(state) = self.jobs.get(&id).map(|j| j.state) else {
            return;
        };
        let next = match state {
            JobState::Scheduled | JobState::Reserved => JobState::Canceled,
            s if held(s) => JobState::Canceling,
            _ => return,
        };
        self.note(|| format!("cancel {id}"));
        self.set_state(id, next);
    }

    fn set_state(&mut self, id: Uuid, state: JobState) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.state = state;
            if state.is_terminal() || held(state) {
                job.token_valid = false;
            }
        }
    }

    /// Buildkite's own clocks: reservations expire, lost agents are noticed.
    pub fn tick(&mut self) {
        let now = self.now_ms;
        let mut notes = Vec::new();
        for (id, job) in self.jobs.iter_mut() {
            if job.state == JobState::Reserved && job.reserved_until_ms < now {
                job.state = JobState::Scheduled;
                job.token_valid = false;
                notes.push(format!("reservation of {id} expired"));
            }
            if let Some(lost) = job.lost_at_ms {
                if held(job.state) && now - lost > LOST_AGENT_MS {
                    job.state = JobState::Failed;
                    notes.push(format!("agent of {id} marked lost; job failed"));
                }
            }
        }
        for note in notes {
            self.note(|| note);
        }
    }

    /// Jobs that ended failed though the simulation never hurt them.
    pub fn check_healthy_jobs(&mut self) {
        let bad: Vec<Uuid> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.state == JobState::Failed && !j.harmed)
            .map(|(id, _)| *id)
            .collect();
        for id in bad {
            if !self.violations.iter().any(|v| v.contains(&id.to_string())) {
                self.violate(format!("healthy job {id} ended failed"));
            }
        }
    }

    /// Jobs whose agent could act now, in a stable order.
    pub fn agents_that_can_move(&self) -> Vec<Uuid> {
        self.launches
            .iter()
            .filter(|(_, l)| l.agent != Agent::Gone)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn all_final(&self) -> bool {
        self.jobs.values().all(|j| j.state.is_terminal())
    }
}
