//! The Stacks API client (reference §1.7): register a stack, list a queue's scheduled jobs,
//! reserve them in batches, issue job acquisition tokens, read job states, finish jobs the
//! stack cannot run and post "why is this job waiting" notifications. Transport, retries and
//! `Retry-After` come from `http::ApiClient`; this module adds the per-scope pacing the
//! server announces in its `RateLimit-*` headers, so a busy scheduler slows itself down
//! before the server has to answer 429.

use crate::http::{decode_json, ApiClient, ApiError, AuthScheme, ClientOptions};
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use reqwest::{Method, Response};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use updraft_model::{JobState, Secret};
use uuid::Uuid;

/// The most job uuids one batch call (reserve, states, tokens, notifications) accepts.
pub const MAX_BATCH: usize = 1000;
/// The largest `limit` scheduled-jobs accepts.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Notification details longer than this are cut by the server; we cut them first.
pub const MAX_NOTIFICATION_DETAIL: usize = 256;
/// Finish details longer than this are rejected.
pub const MAX_FINISH_DETAIL: usize = 4096;

#[derive(Debug, Clone, Serialize)]
pub struct RegisterStack {
    pub key: String,
    #[serde(rename = "type")]
    pub stack_type: String,
    pub queue_key: String,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Stack {
    #[serde(default)]
    pub id: Option<String>,
    pub key: String,
    #[serde(default, rename = "type")]
    pub stack_type: Option<String>,
    #[serde(default)]
    pub cluster_queue_key: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PipelineRef {
    #[serde(default)]
    pub slug: String,
    #[serde(default)]
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BuildRef {
    #[serde(default)]
    pub number: Option<u64>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StepRef {
    #[serde(default)]
    pub key: Option<String>,
}

/// One job from scheduled-jobs. Query rules stay raw strings here: one malformed rule must
/// not make a whole page undecodable, so the scheduler parses them per job.
#[derive(Debug, Clone, Deserialize)]
pub struct ScheduledJob {
    pub id: Uuid,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub agent_query_rules: Vec<String>,
    pub scheduled_at: DateTime<Utc>,
    #[serde(default)]
    pub pipeline: PipelineRef,
    #[serde(default)]
    pub build: BuildRef,
    #[serde(default)]
    pub step: StepRef,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageInfo {
    #[serde(default)]
    pub has_next_page: bool,
    #[serde(default)]
    pub end_cursor: Option<String>,
}

/// The reference leaves open whether the server says `dispatch_paused` or `paused`; both
/// are read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClusterQueue {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub dispatch_paused: Option<bool>,
    #[serde(default)]
    pub paused: Option<bool>,
}

impl ClusterQueue {
    pub fn is_paused(&self) -> bool {
        self.dispatch_paused.or(self.paused).unwrap_or(false)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScheduledJobsPage {
    pub jobs: Vec<ScheduledJob>,
    #[serde(default)]
    pub page_info: PageInfo,
    #[serde(default)]
    pub cluster_queue: ClusterQueue,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Reservation {
    #[serde(default)]
    pub reserved: Vec<Uuid>,
    #[serde(default)]
    pub not_reserved: Vec<Uuid>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobAcquisitionToken {
    pub job_uuid: Uuid,
    pub job_acquisition_token: Secret,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct IssuedTokens {
    #[serde(default)]
    pub job_acquisition_tokens: Vec<JobAcquisitionToken>,
    #[serde(default)]
    pub not_issued: Vec<Uuid>,
}

/// `GET /stacks/{key}/jobs/{id}`.
#[derive(Debug, Clone, Deserialize)]
pub struct StackJob {
    pub id: Uuid,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub command: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub job_uuid: Uuid,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NotificationError {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub indexes: Vec<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NotificationResult {
    #[serde(default)]
    pub errors: Vec<NotificationError>,
}

/// Job states the server reported, plus the raw values we could not read (kept so the
/// caller can log them rather than silently treating the job as unknown).
#[derive(Debug, Clone, Default)]
pub struct JobStates {
    pub states: BTreeMap<Uuid, JobState>,
    pub unreadable: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RawStates {
    #[serde(default)]
    states: BTreeMap<String, String>,
}

/// The rate-limit scopes of reference §1.7, used to pace calls per scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    ListScheduledJobs,
    BatchReserve,
    ShowJob,
    BatchLoadJobStates,
    FinishJob,
    StackNotification,
    Default,
}

/// Per-scope "do not call again before" instants, learned from `RateLimit-Remaining: 0`
/// plus `RateLimit-Reset`.
#[derive(Debug, Default)]
struct Pacer {
    not_before: Mutex<HashMap<Scope, Instant>>,
}

impl Pacer {
    fn wait_for(&self, scope: Scope) -> Option<Duration> {
        let map = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&scope)
            .and_then(|at| at.checked_duration_since(Instant::now()))
    }

    fn learn(&self, scope: Scope, headers: &HeaderMap) {
        let header = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
        let remaining = header("ratelimit-remaining");
        let reset = header("ratelimit-reset").filter(|s| s.is_finite() && *s >= 0.0);
        if let (Some(remaining), Some(reset)) = (remaining, reset) {
            if remaining <= 0.0 {
                let mut map = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
                map.insert(
                    scope,
                    Instant::now() + Duration::from_secs_f64(reset.min(60.0)),
                );
            }
        }
    }
}

/// A client for one stack, authenticated with the cluster agent token.
#[derive(Debug, Clone)]
pub struct StacksClient {
    api: ApiClient,
    key: String,
    pacer: std::sync::Arc<Pacer>,
}

fn segment(raw: &str) -> String {
    url::form_urlencoded::byte_serialize(raw.as_bytes())
        .collect::<String>()
        .replace('.', "%2E")
}

impl StacksClient {
    pub fn new(
        endpoint: &str,
        agent_token: &Secret,
        stack_key: &str,
        options: ClientOptions,
    ) -> Result<Self, ApiError> {
        if stack_key.trim().is_empty() {
            return Err(ApiError::Config("stack key must not be empty".into()));
        }
        let api = ApiClient::new(endpoint, agent_token, AuthScheme::Token, options)?;
        Ok(StacksClient {
            api,
            key: stack_key.to_string(),
            pacer: Default::default(),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    fn path(&self, rest: &str) -> String {
        format!("stacks/{}/{rest}", segment(&self.key))
    }

    async fn call(
        &self,
        scope: Scope,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, ApiError> {
        if let Some(wait) = self.pacer.wait_for(scope) {
            tokio::time::sleep(wait).await;
        }
        let response = self.api.send(request).await?;
        self.pacer.learn(scope, response.headers());
        Ok(response)
    }

    pub async fn register(&self, body: &RegisterStack) -> Result<Stack, ApiError> {
        let request = self.api.request(Method::POST, "stacks/register").json(body);
        decode_json(self.call(Scope::Default, request).await?).await
    }

    pub async fn deregister(&self) -> Result<(), ApiError> {
        let request = self.api.request(Method::POST, &self.path("deregister"));
        self.call(Scope::Default, request).await.map(drop)
    }

    /// One page of a queue's scheduled jobs, oldest first; pass the previous page's
    /// `end_cursor` as `after` to continue.
    pub async fn scheduled_jobs(
        &self,
        queue_key: &str,
        limit: u32,
        after: Option<&str>,
    ) -> Result<ScheduledJobsPage, ApiError> {
        let limit = limit.clamp(1, MAX_PAGE_LIMIT).to_string();
        let mut query = vec![("queue_key", queue_key), ("limit", limit.as_str())];
        if let Some(after) = after {
            query.push(("after", after));
        }
        let request = self
            .api
            .request(Method::GET, &self.path("scheduled-jobs"))
            .query(&query);
        decode_json(self.call(Scope::ListScheduledJobs, request).await?).await
    }

    /// Reserve jobs for this stack; more than `MAX_BATCH` are sent in several calls.
    pub async fn batch_reserve(
        &self,
        jobs: &[Uuid],
        expiry: Option<Duration>,
    ) -> Result<Reservation, ApiError> {
        let mut all = Reservation::default();
        for chunk in jobs.chunks(MAX_BATCH) {
            let mut body = serde_json::json!({ "job_uuids": chunk });
            if let Some(expiry) = expiry {
                body["reservation_expiry_seconds"] = expiry.as_secs().clamp(1, 3600).into();
            }
            let request = self
                .api
                .request(Method::PUT, &self.path("scheduled-jobs/batch-reserve"))
                .json(&body);
            let part: Reservation =
                decode_json(self.call(Scope::BatchReserve, request).await?).await?;
            all.reserved.extend(part.reserved);
            all.not_reserved.extend(part.not_reserved);
        }
        Ok(all)
    }

    /// Job acquisition tokens for reserved jobs: issue them right before starting each
    /// workload, and never start one for a job in `not_issued`.
    pub async fn issue_job_acquisition_tokens(
        &self,
        jobs: &[Uuid],
        lifetime: Duration,
    ) -> Result<IssuedTokens, ApiError> {
        let mut all = IssuedTokens::default();
        for chunk in jobs.chunks(MAX_BATCH) {
            let body = serde_json::json!({ "job_uuids": chunk, "token_lifetime_seconds": lifetime.as_secs().max(1) });
            let request = self
                .api
                .request(Method::POST, &self.path("job-acquisition-tokens"))
                .json(&body);
            let part: IssuedTokens = decode_json(self.call(Scope::Default, request).await?).await?;
            all.job_acquisition_tokens
                .extend(part.job_acquisition_tokens);
            all.not_issued.extend(part.not_issued);
        }
        Ok(all)
    }

    pub async fn job(&self, job: Uuid) -> Result<StackJob, ApiError> {
        let request = self
            .api
            .request(Method::GET, &self.path(&format!("jobs/{job}")));
        decode_json(self.call(Scope::ShowJob, request).await?).await
    }

    pub async fn job_states(&self, jobs: &[Uuid]) -> Result<JobStates, ApiError> {
        let mut all = JobStates::default();
        for chunk in jobs.chunks(MAX_BATCH) {
            let body = serde_json::json!({ "job_uuids": chunk });
            let request = self
                .api
                .request(Method::POST, &self.path("jobs/get-states"))
                .json(&body);
            let raw: RawStates =
                decode_json(self.call(Scope::BatchLoadJobStates, request).await?).await?;
            for (id, state) in raw.states {
                match (id.parse::<Uuid>(), state.parse::<JobState>()) {
                    (Ok(id), Ok(state)) => {
                        all.states.insert(id, state);
                    }
                    _ => {
                        all.unreadable.insert(id, state);
                    }
                }
            }
        }
        Ok(all)
    }

    /// Finish a job the stack cannot run; the detail is shown in the build.
    pub async fn finish_job(
        &self,
        job: Uuid,
        exit_status: i32,
        detail: &str,
    ) -> Result<(), ApiError> {
        let detail = truncate(detail, MAX_FINISH_DETAIL);
        let body = serde_json::json!({ "exit_status": exit_status, "detail": detail });
        let request = self
            .api
            .request(Method::POST, &self.path(&format!("jobs/{job}/finish")))
            .json(&body);
        self.call(Scope::FinishJob, request).await.map(drop)
    }

    /// Post notifications (details cut to 256 bytes); returns the server's per-index errors.
    pub async fn notify(
        &self,
        notifications: &[Notification],
    ) -> Result<NotificationResult, ApiError> {
        let mut all = NotificationResult::default();
        for (chunk_index, chunk) in notifications.chunks(MAX_BATCH).enumerate() {
            let trimmed: Vec<Notification> = chunk
                .iter()
                .map(|n| Notification {
                    detail: truncate(&n.detail, MAX_NOTIFICATION_DETAIL).to_string(),
                    ..n.clone()
                })
                .collect();
            let body = serde_json::json!({ "notifications": trimmed });
            let request = self
                .api
                .request(Method::POST, &self.path("notifications"))
                .json(&body);
            let response = self.call(Scope::StackNotification, request).await?;
            let bytes = response.bytes().await.unwrap_or_default();
            let part: NotificationResult = serde_json::from_slice(&bytes).unwrap_or_default();
            let offset = chunk_index * MAX_BATCH;
            all.errors.extend(part.errors.into_iter().map(|mut e| {
                e.indexes.iter_mut().for_each(|i| *i += offset);
                e
            }));
        }
        Ok(all)
    }
}

/// Cut `text` to at most `max` bytes on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn scheduled_jobs_page_reads_both_pause_spellings_and_raw_rules() {
        let page: ScheduledJobsPage = serde_json::from_str(
            r#"{"jobs":[{"id":"6f1c2f64-4f6a-4c4e-9a0b-0c8f3f4a1b2c","priority":3,"agent_query_rules":["queue=linux","bad"],
                 "scheduled_at":"2026-11-22T10:00:00Z","pipeline":{"slug":"p"},"build":{"number":4},"step":{"key":null}}],
                 "page_info":{"has_next_page":true,"end_cursor":"abc"},"cluster_queue":{"id":"q","paused":true}}"#,
        )
        .unwrap();
        assert_eq!(page.jobs[0].agent_query_rules, vec!["queue=linux", "bad"]);
        assert!(page.cluster_queue.is_paused());
        assert_eq!(page.page_info.end_cursor.as_deref(), Some("abc"));
        let other: ClusterQueue = serde_json::from_str(r#"{"dispatch_paused":false}"#).unwrap();
        assert!(!other.is_paused());
    }

    #[test]
    fn an_exhausted_rate_limit_delays_the_next_call_of_that_scope_only() {
        let pacer = Pacer::default();
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-remaining", HeaderValue::from_static("3"));
        headers.insert("ratelimit-reset", HeaderValue::from_static("1"));
        pacer.learn(Scope::BatchReserve, &headers);
        assert_eq!(pacer.wait_for(Scope::BatchReserve), None);
        headers.insert("ratelimit-remaining", HeaderValue::from_static("0"));
        pacer.learn(Scope::BatchReserve, &headers);
        let wait = pacer.wait_for(Scope::BatchReserve).expect("a wait");
        assert!(
            wait > Duration::from_millis(500) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(pacer.wait_for(Scope::ListScheduledJobs), None);
    }

    #[test]
    fn truncate_respects_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn stack_keys_are_escaped_in_paths() {
        assert_eq!(segment("my.stack"), "my%2Estack");
        assert_eq!(segment("a/b"), "a%2Fb");
    }
}
