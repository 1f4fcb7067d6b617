//! Shared test harness: an in-process emulator and plain-reqwest helpers for the calls most
//! tests need (REST pipeline/build creation, agent register/connect, job acquisition).

#![allow(dead_code)]

use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;
use updraft_emulator::{EmulatorConfig, EmulatorHandle};

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

    pub fn emu(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/_emulator{path}", self.emulator.url()))
    }

    pub fn agent_token(&self) -> String {
        self.emulator.agent_token().expose().to_string()
    }

    pub async fn create_pipeline(&self, slug: &str, yaml: &str) -> Value {
        let response = self
            .v2(Method::POST, "/organizations/acme/pipelines")
            .json(&json!({"name": slug, "slug": slug, "repository": "https://example.invalid/repo.git", "configuration": yaml}))
            .send()
            .await
            .unwrap();
        expect_json(response, StatusCode::CREATED).await
    }

    pub async fn create_build(&self, slug: &str) -> Value {
        let response = self
            .v2(
                Method::POST,
                &format!("/organizations/acme/pipelines/{slug}/builds"),
            )
            .json(&json!({"commit": "HEAD", "branch": "main", "message": "test"}))
            .send()
            .await
            .unwrap();
        expect_json(response, StatusCode::CREATED).await
    }

    pub async fn get_build(&self, slug: &str, number: u64) -> Value {
        let response = self
            .v2(
                Method::GET,
                &format!("/organizations/acme/pipelines/{slug}/builds/{number}"),
            )
            .send()
            .await
            .unwrap();
        expect_json(response, StatusCode::OK).await
    }

    pub async fn register(&self, tags: &[&str]) -> Agent {
        self.register_with(&self.agent_token(), tags, false).await
    }

    pub async fn register_with(&self, token: &str, tags: &[&str], acquire_mode: bool) -> Agent {
        let response = self
            .v3(Method::POST, "/register", token)
            .json(&json!({"name": "test-agent", "hostname": "host", "os": "linux", "arch": "amd64", "version": "3.137.0", "meta_data": tags, "ignore_in_dispatches": acquire_mode}))
            .send()
            .await
            .unwrap();
        let body = expect_json(response, StatusCode::OK).await;
        let agent = Agent {
            id: body["id"].as_str().unwrap().to_string(),
            session: body["access_token"].as_str().unwrap().to_string(),
        };
        let response = self
            .v3(Method::POST, "/connect", &agent.session)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        agent
    }

    /// Acquire `job` with the lock header; returns the Job JSON.
    pub async fn acquire(&self, agent: &Agent, job: &str) -> Response {
        self.v3(Method::PUT, &format!("/jobs/{job}/acquire"), &agent.session)
            .header("x-buildkite-lock-acquire-job", "1")
            .send()
            .await
            .unwrap()
    }

    pub async fn start_job(&self, job: &Value) {
        let token = job["token"].as_str().unwrap();
        let id = job["id"].as_str().unwrap();
        let response = self
            .v3(Method::PUT, &format!("/jobs/{id}/start"), token)
            .json(&json!({"started_at": "2026-01-01T00:00:00Z"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "start: {}",
            response.text().await.unwrap()
        );
    }

    pub async fn upload_chunk(
        &self,
        job: &Value,
        sequence: u64,
        offset: u64,
        data: &[u8],
    ) -> Response {
        let token = job["token"].as_str().unwrap();
        let id = job["id"].as_str().unwrap();
        self.v3(
            Method::POST,
            &format!(
                "/jobs/{id}/chunks?sequence={sequence}&offset={offset}&size={}",
                data.len()
            ),
            token,
        )
        .header("content-type", "text/plain")
        .header("content-encoding", "gzip")
        .body(gzip(data))
        .send()
        .await
        .unwrap()
    }

    pub async fn finish(&self, job: &Value, exit_status: &str) -> Response {
        let token = job["token"].as_str().unwrap();
        let id = job["id"].as_str().unwrap();
        self.v3(Method::PUT, &format!("/jobs/{id}/finish"), token)
            .json(&json!({"exit_status": exit_status, "chunks_failed_count": 0}))
            .send()
            .await
            .unwrap()
    }

    /// Register an agent, acquire, start and finish `job` with `exit_status`.
    pub async fn run_job(&self, job_id: &str, exit_status: &str) -> Value {
        let agent = self.register(&[]).await;
        let job = expect_json(self.acquire(&agent, job_id).await, StatusCode::OK).await;
        self.start_job(&job).await;
        let response = self.finish(&job, exit_status).await;
        assert_eq!(response.status(), StatusCode::OK);
        job
    }

    pub async fn timeline(&self, job: &str) -> Value {
        expect_json(
            self.emu(Method::GET, &format!("/jobs/{job}"))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await
    }

    pub async fn job_state(&self, job: &str) -> String {
        self.timeline(job).await["state"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
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
