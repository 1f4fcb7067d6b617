//! Shared test harness: an in-process emulator and plain-reqwest helpers for the calls most
//! tests need (REST pipeline/build creation, agent register/connect/ping, job acquisition and
//! job-token calls), the `Call` trait that sends a request and checks its status in one step,
//! state assertions that name the job or build, and a local receiver for pushed events.

#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use updraft_emulator::{EmulatorConfig, EmulatorHandle, PushTargets, WebhookAuth, WebhookTarget};
use updraft_model::Secret;

pub struct Harness {
    pub emulator: EmulatorHandle,
    pub http: reqwest::Client,
}

pub async fn start() -> Harness {
    start_with(EmulatorConfig::default()).await
}

pub async fn start_with(config: EmulatorConfig) -> Harness {
    let emulator = updraft_emulator::start(config)
        .await
        .expect("emulator starts");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    Harness { emulator, http }
}

/// An agent registered and connected through the agent API.
pub struct Agent {
    pub id: String,
    pub session: String,
}

impl Harness {
    pub fn v3(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.emulator.agent_endpoint()))
            .header("authorization", format!("Token {token}"))
    }

    pub fn v2(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/v2{path}", self.emulator.url()))
            .header(
                "authorization",
                format!("Bearer {}", self.emulator.api_token().expose()),
            )
    }

    /// An agent API call made with the organisation's agent token (register, Stacks API).
    pub fn with_agent_token(&self, method: Method, path: &str) -> RequestBuilder {
        self.v3(method, path, &self.agent_token())
    }

    pub fn emu(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/_emulator{path}", self.emulator.url()))
    }

    /// GET a REST v2 `path`, asserting 200; returns the JSON body.
    pub async fn rest_get(&self, path: &str) -> Value {
        self.v2(Method::GET, path).expect_json(StatusCode::OK).await
    }

    /// GET an `/_emulator` `path`, asserting 200; returns the JSON body.
    pub async fn emu_get(&self, path: &str) -> Value {
        self.emu(Method::GET, path)
            .expect_json(StatusCode::OK)
            .await
    }

    pub fn agent_token(&self) -> String {
        self.emulator.agent_token().expose().to_string()
    }

    pub async fn create_pipeline(&self, slug: &str, yaml: &str) -> Value {
        self.v2(Method::POST, "/organizations/acme/pipelines")
            .json(&json!({"name": slug, "slug": slug, "repository": "https://example.invalid/repo.git", "configuration": yaml}))
            .expect_json(StatusCode::CREATED)
            .await
    }

    pub async fn create_build(&self, slug: &str) -> Value {
        self.v2(
            Method::POST,
            &format!("/organizations/acme/pipelines/{slug}/builds"),
        )
        .json(&json!({"commit": "HEAD", "branch": "main", "message": "test"}))
        .expect_json(StatusCode::CREATED)
        .await
    }

    pub async fn get_build(&self, slug: &str, number: u64) -> Value {
        self.rest_get(&format!(
            "/organizations/acme/pipelines/{slug}/builds/{number}"
        ))
        .await
    }

    pub async fn register(&self, tags: &[&str]) -> Agent {
        self.register_with(&self.agent_token(), tags, false).await
    }

    pub async fn register_with(&self, token: &str, tags: &[&str], acquire_mode: bool) -> Agent {
        let body = self
            .v3(Method::POST, "/register", token)
            .json(&json!({"name": "test-agent", "hostname": "host", "os": "linux", "arch": "amd64", "version": "3.137.0", "meta_data": tags, "ignore_in_dispatches": acquire_mode}))
            .expect_json(StatusCode::OK)
            .await;
        let agent = Agent {
            id: body["id"].as_str().unwrap().to_string(),
            session: body["access_token"].as_str().unwrap().to_string(),
        };
        self.v3(Method::POST, "/connect", &agent.session)
            .expect_status(StatusCode::OK)
            .await;
        agent
    }

    /// Acquire `job` with the lock header; returns the Job JSON.
    pub async fn acquire(&self, agent: &Agent, job: &str) -> Response {
        self.v3(Method::PUT, &format!("/jobs/{job}/acquire"), &agent.session)
            .header("x-buildkite-lock-acquire-job", "1")
            .sent()
            .await
    }

    /// Acquire `job` and assert it was handed over; returns the Job JSON.
    pub async fn acquire_ok(&self, agent: &Agent, job: &str) -> Value {
        expect_json(self.acquire(agent, job).await, StatusCode::OK).await
    }

    /// A call on `/jobs/{id}{action}` made with the acquired job's own token.
    pub fn job_call(&self, method: Method, job: &Value, action: &str) -> RequestBuilder {
        let token = job["token"].as_str().expect("acquired job has a token");
        let id = job["id"].as_str().expect("acquired job has an id");
        self.v3(method, &format!("/jobs/{id}{action}"), token)
    }

    pub async fn start_job(&self, job: &Value) {
        self.job_call(Method::PUT, job, "/start")
            .json(&json!({"started_at": "2026-01-01T00:00:00Z"}))
            .expect_status(StatusCode::OK)
            .await;
    }

    pub async fn upload_chunk(
        &self,
        job: &Value,
        sequence: u64,
        offset: u64,
        data: &[u8],
    ) -> Response {
        self.job_call(
            Method::POST,
            job,
            &format!(
                "/chunks?sequence={sequence}&offset={offset}&size={}",
                data.len()
            ),
        )
        .header("content-type", "text/plain")
        .header("content-encoding", "gzip")
        .body(gzip(data))
        .sent()
        .await
    }

    pub async fn finish(&self, job: &Value, exit_status: &str) -> Response {
        self.job_call(Method::PUT, job, "/finish")
            .json(&json!({"exit_status": exit_status, "chunks_failed_count": 0}))
            .sent()
            .await
    }

    /// Create pipeline `slug` from `yaml` and its first build; returns the REST build.
    pub async fn first_build(&self, slug: &str, yaml: &str) -> Value {
        self.create_pipeline(slug, yaml).await;
        self.create_build(slug).await
    }

    /// Create pipeline `slug` from `yaml` and its first build; returns the command job ids.
    pub async fn start_build(&self, slug: &str, yaml: &str) -> Vec<String> {
        script_jobs(&self.first_build(slug, yaml).await)
    }

    /// Create pipeline `slug` from `yaml` and its first build; returns the first command job id.
    pub async fn start_one_job(&self, slug: &str, yaml: &str) -> String {
        self.start_build(slug, yaml).await.swap_remove(0)
    }

    pub async fn assert_job_state(&self, job: &str, expected: &str) {
        assert_eq!(self.job_state(job).await, expected, "state of job {job}");
    }

    pub async fn assert_build_state(&self, slug: &str, number: u64, expected: &str) {
        assert_eq!(
            self.get_build(slug, number).await["state"],
            expected,
            "state of build {slug}/{number}"
        );
    }

    /// Point the webhook (authenticated with `webhook_token`) and EventBridge at two fresh
    /// receivers; returns what each of them gets, webhook first.
    pub async fn push_to_receivers(&self, webhook_token: &str) -> (Received, Received) {
        let (hook_url, hooks) = receiver().await;
        let (bridge_url, bridge) = receiver().await;
        self.emulator.set_push_targets(PushTargets {
            webhook: Some(WebhookTarget {
                url: hook_url,
                auth: WebhookAuth::Token(Secret::new(webhook_token)),
            }),
            eventbridge_url: Some(bridge_url),
        });
        (hooks, bridge)
    }

    /// The agent's next ping, asserted to succeed.
    pub async fn ping(&self, agent: &Agent) -> Value {
        self.v3(Method::GET, "/ping", &agent.session)
            .expect_json(StatusCode::OK)
            .await
    }

    /// Ping as `agent` and assert the ping hands it `job`; returns the ping.
    pub async fn assert_dispatched(&self, agent: &Agent, job: &str) -> Value {
        let ping = self.ping(agent).await;
        assert_eq!(ping["job"]["id"], job, "ping of agent {}: {ping}", agent.id);
        ping
    }

    /// Accept the dispatched `job` as `agent`.
    pub fn accept(&self, agent: &Agent, job: &str) -> RequestBuilder {
        self.v3(Method::PUT, &format!("/jobs/{job}/accept"), &agent.session)
    }

    /// Register an agent, acquire and start `job_id`; returns the Job JSON.
    pub async fn running_job(&self, job_id: &str) -> Value {
        let agent = self.register(&[]).await;
        let job = self.acquire_ok(&agent, job_id).await;
        self.start_job(&job).await;
        job
    }

    /// Register an agent, acquire, start and finish `job` with `exit_status`.
    pub async fn run_job(&self, job_id: &str, exit_status: &str) -> Value {
        let job = self.running_job(job_id).await;
        let response = self.finish(&job, exit_status).await;
        assert_eq!(response.status(), StatusCode::OK);
        job
    }

    pub async fn timeline(&self, job: &str) -> Value {
        self.emu_get(&format!("/jobs/{job}")).await
    }

    pub async fn job_state(&self, job: &str) -> String {
        self.timeline(job).await["state"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// Each POST a receiver got: headers, parsed JSON body (`null` if not JSON), raw body.
pub type Received = Arc<Mutex<Vec<(HeaderMap, Value, Bytes)>>>;

/// A local HTTP receiver recording every POST; returns its URL.
pub async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/",
            post(
                |State(store): State<Received>, headers: HeaderMap, body: Bytes| async move {
                    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    store
                        .lock()
                        .expect("receiver store")
                        .push((headers, value, body));
                    "ok"
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("receiver binds");
    let url = format!(
        "http://{}/",
        listener.local_addr().expect("receiver address")
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Send a request and check its answer in one step, so a test line says what it expects.
// Tests run on tokio's current-thread runtime, so the futures need no `Send` bound.
#[allow(async_fn_in_trait)]
pub trait Call {
    /// Send; a transport failure fails the test.
    async fn sent(self) -> Response;
    /// Send, assert `status` and return the JSON body.
    async fn expect_json(self, status: StatusCode) -> Value;
    /// Send, assert an error `status` with a `{"message"}` body; returns the message.
    async fn expect_error(self, status: StatusCode) -> String;
    /// Send and assert only the status.
    async fn expect_status(self, status: StatusCode);
}

impl Call for RequestBuilder {
    async fn sent(self) -> Response {
        self.send().await.expect("request reaches the emulator")
    }

    async fn expect_json(self, status: StatusCode) -> Value {
        expect_json(self.sent().await, status).await
    }

    async fn expect_error(self, status: StatusCode) -> String {
        expect_error(self.sent().await, status).await
    }

    async fn expect_status(self, status: StatusCode) {
        let response = self.sent().await;
        let got = response.status();
        let text = response.text().await.unwrap_or_default();
        assert_eq!(got, status, "unexpected status; body: {text}");
    }
}

/// Assert the status and return the JSON body, showing the body on mismatch.
pub async fn expect_json(response: Response, status: StatusCode) -> Value {
    let got = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(got, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// Assert an error status with a `{"message"}` body; returns the message.
pub async fn expect_error(response: Response, status: StatusCode) -> String {
    let body = expect_json(response, status).await;
    body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error body has no message: {body}"))
        .to_string()
}

/// Poll `check` until it returns true (state changes driven by timers), up to 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Command job ids of a REST build, in step order.
pub fn script_jobs(build: &Value) -> Vec<String> {
    build["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["type"] == "script")
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

pub fn jobs_of_type(build: &Value, kind: &str) -> Vec<String> {
    build["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["type"] == kind)
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}
