//! The REST API v2 client (reference §3), Bearer-authenticated and scoped to one
//! organization: pipelines (create from YAML), builds (create, get, list with filters,
//! cancel, rebuild), jobs (log, env, retry) and agents (list, get, stop, pause, resume).
//! Lists follow the `Link: <…>; rel="next"` header (or the cursor `links.next` of a build's
//! job list).

use crate::http::{decode_json, path_segment, ApiClient, ApiError, AuthScheme, ClientOptions};
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, LINK};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use updraft_model::{JobState, Secret};

/// Lists stop after this many pages, so a server that always says "next" cannot loop us.
pub const MAX_PAGES: usize = 1000;
/// The largest page the API serves.
pub const MAX_PER_PAGE: u32 = 100;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pipeline {
    #[serde(default)]
    pub id: String,
    pub slug: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub default_branch: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
}

/// `POST /v2/organizations/{org}/pipelines` with the steps as YAML (`configuration`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreatePipeline {
    pub name: String,
    pub repository: String,
    pub configuration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateBuild {
    pub commit: String,
    pub branch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta_data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct AgentRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// A job as the REST API shows it. `state` stays a string so one unexpected value cannot
/// make a whole build undecodable; `state()` reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Job {
    pub id: String,
    #[serde(default, rename = "type")]
    pub job_type: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub step_key: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub agent_query_rules: Vec<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub exit_status: Option<i64>,
    #[serde(default)]
    pub signal: Option<String>,
    #[serde(default)]
    pub signal_reason: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
    #[serde(default)]
    pub log_url: Option<String>,
    #[serde(default)]
    pub raw_log_url: Option<String>,
    #[serde(default)]
    pub runnable_at: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub retried: bool,
    #[serde(default)]
    pub retried_in_job_id: Option<String>,
    #[serde(default)]
    pub agent: Option<AgentRef>,
}

impl Job {
    pub fn state(&self) -> Option<JobState> {
        self.state.as_deref().and_then(|s| s.parse().ok())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Build {
    #[serde(default)]
    pub id: String,
    pub number: u64,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub jobs: Vec<Job>,
    #[serde(default)]
    pub pipeline: Option<Pipeline>,
}

impl Build {
    /// Whether the build reached a state it will not leave.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state.as_str(),
            "passed" | "failed" | "canceled" | "skipped" | "not_run"
        )
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Agent {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub connection_state: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub meta_data: Vec<String>,
    #[serde(default)]
    pub job: Option<Job>,
    #[serde(default)]
    pub paused: Option<bool>,
    /// RFC 3339; when the agent connected.
    #[serde(default)]
    pub connected_at: Option<String>,
    /// RFC 3339; when the agent last finished a job.
    #[serde(default)]
    pub last_job_finished_at: Option<String>,
}

/// Which builds to list (reference §3.4); empty fields are not sent.
#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    /// Only this pipeline's builds (else the whole organization's).
    pub pipeline: Option<String>,
    /// `state[]` values, e.g. `running`, `finished`.
    pub states: Vec<String>,
    pub branches: Vec<String>,
    pub commit: Option<String>,
    pub per_page: Option<u32>,
    /// Stop after this many builds (newest first).
    pub limit: Option<usize>,
}

/// A log as the API returns it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobLog {
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RestClient {
    client: ApiClient,
    org: String,
}

impl RestClient {
    /// `base` is e.g. `https://api.buildkite.com` (a trailing `/v2` is accepted too).
    pub fn new(
        base: &str,
        token: &Secret,
        org: &str,
        options: ClientOptions,
    ) -> Result<Self, ApiError> {
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/v2").unwrap_or(base);
        if org.trim().is_empty() {
            return Err(ApiError::Config(
                "organization slug must not be empty".into(),
            ));
        }
        Ok(RestClient {
            client: ApiClient::new(base, token, AuthScheme::Bearer, options)?,
            org: org.to_string(),
        })
    }

    pub fn org(&self) -> &str {
        &self.org
    }

    pub fn api(&self) -> &ApiClient {
        &self.client
    }

    fn org_path(&self, rest: &str) -> String {
        format!("v2/organizations/{}/{rest}", path_segment(&self.org))
    }

    fn build_path(&self, pipeline: &str, number: u64, rest: &str) -> String {
        self.org_path(&format!(
            "pipelines/{}/builds/{number}{rest}",
            path_segment(pipeline)
        ))
    }

    fn job_path(&self, pipeline: &str, number: u64, job_id: &str, rest: &str) -> String {
        self.build_path(
            pipeline,
            number,
            &format!("/jobs/{}{rest}", path_segment(job_id)),
        )
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T, ApiError> {
        self.client.json(self.client.request(method, path)).await
    }

    pub async fn create_pipeline(&self, pipeline: &CreatePipeline) -> Result<Pipeline, ApiError> {
        self.client
            .json(
                self.client
                    .request(Method::POST, &self.org_path("pipelines"))
                    .json(pipeline),
            )
            .await
    }

    pub async fn get_pipeline(&self, slug: &str) -> Result<Pipeline, ApiError> {
        self.call(
            Method::GET,
            &self.org_path(&format!("pipelines/{}", path_segment(slug))),
        )
        .await
    }

    pub async fn create_build(
        &self,
        pipeline: &str,
        build: &CreateBuild,
    ) -> Result<Build, ApiError> {
        let path = self.org_path(&format!("pipelines/{}/builds", path_segment(pipeline)));
        self.client
            .json(self.client.request(Method::POST, &path).json(build))
            .await
    }

    pub async fn get_build(&self, pipeline: &str, number: u64) -> Result<Build, ApiError> {
        self.call(Method::GET, &self.build_path(pipeline, number, ""))
            .await
    }

    pub async fn cancel_build(&self, pipeline: &str, number: u64) -> Result<Build, ApiError> {
        self.call(Method::PUT, &self.build_path(pipeline, number, "/cancel"))
            .await
    }

    pub async fn rebuild(&self, pipeline: &str, number: u64) -> Result<Build, ApiError> {
        self.call(Method::PUT, &self.build_path(pipeline, number, "/rebuild"))
            .await
    }

    /// Builds newest first, across pages.
    pub async fn list_builds(&self, filter: &BuildFilter) -> Result<Vec<Build>, ApiError> {
        let path = match &filter.pipeline {
            Some(pipeline) => {
                self.org_path(&format!("pipelines/{}/builds", path_segment(pipeline)))
            }
            None => self.org_path("builds"),
        };
        let mut query: Vec<(&str, String)> = Vec::new();
        query.extend(filter.states.iter().map(|s| ("state[]", s.clone())));
        query.extend(filter.branches.iter().map(|b| ("branch[]", b.clone())));
        if let Some(commit) = &filter.commit {
            query.push(("commit", commit.clone()));
        }
        query.push((
            "per_page",
            filter
                .per_page
                .unwrap_or(MAX_PER_PAGE)
                .min(MAX_PER_PAGE)
                .to_string(),
        ));
        let first = self.client.request(Method::GET, &path).query(&query);
        self.collect_pages(first, filter.limit.unwrap_or(usize::MAX))
            .await
    }

    pub async fn get_job(&self, job_id: &str) -> Result<Job, ApiError> {
        self.call(
            Method::GET,
            &self.org_path(&format!("jobs/{}", path_segment(job_id))),
        )
        .await
    }

    /// A build's jobs, following the cursor pagination of this one endpoint.
    pub async fn list_build_jobs(
        &self,
        pipeline: &str,
        number: u64,
        states: &[&str],
    ) -> Result<Vec<Job>, ApiError> {
        #[derive(Deserialize)]
        struct Links {
            #[serde(default)]
            next: Option<String>,
        }
        #[derive(Deserialize)]
        struct CursorPage {
            items: Vec<Job>,
            #[serde(default)]
            links: Option<Links>,
        }
        let mut query: Vec<(&str, String)> =
            states.iter().map(|s| ("state[]", s.to_string())).collect();
        query.push(("per_page", MAX_PER_PAGE.to_string()));
        let mut request = self
            .client
            .request(Method::GET, &self.build_path(pipeline, number, "/jobs"))
            .query(&query);
        let mut jobs = Vec::new();
        for _ in 0..MAX_PAGES {
            let page: CursorPage = self.client.json(request).await?;
            jobs.extend(page.items);
            match page.links.and_then(|l| l.next).filter(|n| !n.is_empty()) {
                Some(next) => request = self.client.request_url(Method::GET, &next)?,
                None => return Ok(jobs),
            }
        }
        Ok(jobs)
    }

    /// The job's log text, byte for byte: asked for as plain text; a JSON answer's
    /// `content` is used if the server sends JSON anyway.
    pub async fn job_log(
        &self,
        pipeline: &str,
        number: u64,
        job_id: &str,
    ) -> Result<Vec<u8>, ApiError> {
        let request = self
            .client
            .request(
                Method::GET,
                &self.job_path(pipeline, number, job_id, "/log"),
            )
            .header(ACCEPT, "text/plain");
        let response = self.client.send(request).await?;
        let is_json = content_type_is_json(response.headers());
        let path = response.url().path().to_string();
        let bytes = response.bytes().await.map_err(|e| ApiError::Network {
            method: Method::GET,
            path: path.clone(),
            detail: format!("failed reading the log body: {e}"),
        })?;
        if is_json {
            let log: JobLog = serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
                method: Method::GET,
                path,
                detail: e.to_string(),
            })?;
            return Ok(log.content.into_bytes());
        }
        Ok(bytes.to_vec())
    }

    pub async fn job_env(
        &self,
        pipeline: &str,
        number: u64,
        job_id: &str,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        #[derive(Deserialize)]
        struct Env {
            env: BTreeMap<String, String>,
        }
        let env: Env = self
            .call(
                Method::GET,
                &self.job_path(pipeline, number, job_id, "/env"),
            )
            .await?;
        Ok(env.env)
    }

    pub async fn retry_job(
        &self,
        pipeline: &str,
        number: u64,
        job_id: &str,
    ) -> Result<Job, ApiError> {
        self.call(
            Method::PUT,
            &self.job_path(pipeline, number, job_id, "/retry"),
        )
        .await
    }

    /// Connected and stopping agents (the API lists no others).
    pub async fn list_agents(&self) -> Result<Vec<Agent>, ApiError> {
        let first = self
            .client
            .request(Method::GET, &self.org_path("agents"))
            .query(&[("per_page", MAX_PER_PAGE.to_string())]);
        self.collect_pages(first, usize::MAX).await
    }

    pub async fn get_agent(&self, agent_id: &str) -> Result<Agent, ApiError> {
        self.call(
            Method::GET,
            &self.org_path(&format!("agents/{}", path_segment(agent_id))),
        )
        .await
    }

    /// Stop an agent; `force` also cancels its running job.
    pub async fn stop_agent(&self, agent_id: &str, force: bool) -> Result<(), ApiError> {
        let path = self.org_path(&format!("agents/{}/stop", path_segment(agent_id)));
        let request = self
            .client
            .request(Method::PUT, &path)
            .json(&serde_json::json!({ "force": force }));
        self.client.send(request).await.map(drop)
    }

    /// Pause an agent: it keeps pinging but takes no jobs until resumed (or the timeout).
    pub async fn pause_agent(
        &self,
        agent_id: &str,
        note: Option<&str>,
        timeout_in_minutes: Option<u32>,
    ) -> Result<(), ApiError> {
        let path = self.org_path(&format!("agents/{}/pause", path_segment(agent_id)));
        let mut body = serde_json::Map::new();
        if let Some(note) = note {
            body.insert("note".into(), note.into());
        }
        if let Some(minutes) = timeout_in_minutes {
            body.insert("timeout_in_minutes".into(), minutes.into());
        }
        self.client
            .send(self.client.request(Method::PUT, &path).json(&body))
            .await
            .map(drop)
    }

    pub async fn resume_agent(&self, agent_id: &str) -> Result<(), ApiError> {
        let path = self.org_path(&format!("agents/{}/resume", path_segment(agent_id)));
        self.client
            .send(self.client.request(Method::PUT, &path))
            .await
            .map(drop)
    }

    async fn collect_pages<T: DeserializeOwned>(
        &self,
        first: RequestBuilder,
        limit: usize,
    ) -> Result<Vec<T>, ApiError> {
        let mut items = Vec::new();
        let mut request = first;
        for _ in 0..MAX_PAGES {
            let response: Response = self.client.send(request).await?;
            let next = next_link(response.headers());
            let page: Vec<T> = decode_json(response).await?;
            let empty = page.is_empty();
            items.extend(page);
            if items.len() >= limit {
                items.truncate(limit);
                return Ok(items);
            }
            match next {
                Some(url) if !empty => request = self.client.request_url(Method::GET, &url)?,
                _ => return Ok(items),
            }
        }
        Ok(items)
    }
}

fn content_type_is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"))
}

/// The `rel="next"` URL of a `Link` header (RFC 8288).
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|part| {
            let (target, params) = part.split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let is_next = params.split(';').any(|param| {
                let param = param.trim().replace(' ', "");
                param == "rel=\"next\"" || param == "rel=next"
            });
            is_next.then(|| target.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn next_link_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            HeaderValue::from_static(
                r#"<https://api.buildkite.com/v2/builds?page=1>; rel="first", <https://api.buildkite.com/v2/builds?page=3>; rel="next""#,
            ),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("https://api.buildkite.com/v2/builds?page=3")
        );
        headers.insert(
            LINK,
            HeaderValue::from_static(r#"<https://x/v2/builds?page=1>; rel="prev""#),
        );
        assert_eq!(next_link(&headers), None);
        assert_eq!(next_link(&HeaderMap::new()), None);
    }

    #[test]
    fn rest_jobs_decode_with_unknown_states() {
        let job: Job = serde_json::from_str(
            r#"{"id":"j","type":"script","state":"teleporting","exit_status":3}"#,
        )
        .unwrap();
        assert_eq!(job.state(), None);
        assert_eq!(job.exit_status, Some(3));
        let job: Job = serde_json::from_str(r#"{"id":"j","state":"passed"}"#).unwrap();
        assert_eq!(job.state(), Some(JobState::Passed));
    }

    #[test]
    fn base_url_may_include_v2() {
        let client = RestClient::new(
            "http://127.0.0.1:1/v2/",
            &Secret::new("bkua_x"),
            "acme",
            ClientOptions::default(),
        )
        .unwrap();
        assert_eq!(client.api().base(), "http://127.0.0.1:1");
        assert_eq!(client.org_path("builds"), "v2/organizations/acme/builds");
    }

    #[test]
    fn links_to_another_origin_are_not_followed_with_our_token() {
        let client = RestClient::new(
            "http://127.0.0.1:1",
            &Secret::new("bkua_x"),
            "acme",
            ClientOptions::default(),
        )
        .unwrap();
        assert!(client
            .api()
            .request_url(Method::GET, "http://127.0.0.1:1/v2/builds?page=2")
            .is_ok());
        let err = client
            .api()
            .request_url(Method::GET, "http://evil.example/v2/builds?page=2")
            .unwrap_err();
        assert!(err.to_string().contains("evil.example"));
    }
}
