//! JSON the APIs answer with, built from the records: the agent's Job (reference §2), and the
//! REST job, build, pipeline and agent objects (reference §3).

use super::model::*;
use super::State;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use updraft_model::JobState;
use uuid::Uuid;

pub fn graphql_id(kind: &str, id: Uuid) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{kind}---{id}"))
}

pub fn time(t: Option<Time>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    })
}

/// REST shows `finished` as passed/failed; the emulator stores those directly.
fn rest_state(state: JobState) -> &'static str {
    state.as_str()
}

impl State {
    pub fn build_url(&self, build: &Build) -> String {
        format!(
            "{}/v2/organizations/{}/pipelines/{}/builds/{}",
            self.settings.base_url, self.settings.org, build.pipeline, build.number
        )
    }

    pub fn build_web_url(&self, build: &Build) -> String {
        format!(
            "{}/{}/{}/builds/{}",
            self.settings.base_url, self.settings.org, build.pipeline, build.number
        )
    }

    pub fn rest_job(&self, job: &Job) -> Value {
        let build = self.builds.get(&job.build_id);
        let build_url = build.map(|b| self.build_url(b)).unwrap_or_default();
        let web = build.map(|b| self.build_web_url(b)).unwrap_or_default();
        let agent = job
            .agent_id
            .and_then(|id| self.agents.get(&id))
            .map(|a| json!({"id": a.id, "url": self.agent_url(a.id), "name": a.name}));
        let name = job.step.label.clone().or_else(|| job.step.command.clone());
        json!({
            "id": job.id,
            "graphql_id": graphql_id("JobTypeCommand", job.id),
            "type": job.kind.as_str(),
            "name": name,
            "label": job.step.label,
            "step_key": job.step.key,
            "step": {"id": job.step_id, "signature": null},
            "priority": {"number": job.step.priority},
            "agent_query_rules": job.step.agents.to_strings(),
            "state": rest_state(job.state),
            "web_url": format!("{web}#{}", job.id),
            "log_url": format!("{build_url}/jobs/{}/log", job.id),
            "raw_log_url": format!("{build_url}/jobs/{}/log.txt", job.id),
            "command": job.step.command,
            "soft_failed": false,
            "exit_status": job.exit_status,
            "signal": job.signal,
            "signal_reason": job.signal_reason,
            "broken_reason": job.broken_reason,
            "created_at": time(Some(job.created_at)),
            "scheduled_at": time(job.scheduled_at),
            "runnable_at": time(job.runnable_at),
            "started_at": time(job.started_at),
            "finished_at": time(job.finished_at),
            "expired_at": time(job.expired_at),
            "retried": job.retried_in.is_some(),
            "retried_in_job_id": job.retried_in,
            "retries_count": job.retries_count,
            "retry_type": if job.retries_count > 0 { Value::from("manual") } else { Value::Null },
            "parallel_group_index": job.parallel.map(|p| p.0),
            "parallel_group_total": job.parallel.map(|p| p.1),
            "agent": agent,
            "unblocked_by": job.unblocked_by,
            "cluster_id": self.settings.cluster_id,
            "cluster_queue_id": queue_id(job.step.agents.queue()),
        })
    }

    pub fn rest_build(&self, build: &Build, with_jobs: bool) -> Value {
        let pipeline = self
            .pipelines
            .get(&build.pipeline)
            .map(|p| self.rest_pipeline(p))
            .unwrap_or(Value::Null);
        let mut value = json!({
            "id": build.id,
            "graphql_id": graphql_id("Build", build.id),
            "url": self.build_url(build),
            "web_url": self.build_web_url(build),
            "number": build.number,
            "state": build.state.as_str(),
            "blocked": build.state == BuildState::Blocked,
            "cancel_reason": null,
            "message": build.message,
            "commit": build.commit,
            "branch": build.branch,
            "tag": null,
            "env": build.env,
            "source": build.source,
            "creator": {"id": Uuid::nil(), "name": "Updraft emulator", "email": "emulator@updraft.invalid"},
            "created_at": time(Some(build.created_at)),
            "scheduled_at": time(Some(build.created_at)),
            "started_at": time(build.started_at),
            "finished_at": time(build.finished_at),
            "meta_data": build.meta_data,
            "pull_request": null,
            "rebuilt_from": build.rebuilt_from.map(|(id, number)| json!({"id": id, "number": number})),
            "pipeline": pipeline,
        });
        if with_jobs {
            let jobs: Vec<Value> = build
                .jobs
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .map(|j| self.rest_job(j))
                .collect();
            value["jobs"] = Value::Array(jobs);
        }
        value
    }

    pub fn pipeline_url(&self, slug: &str) -> String {
        format!(
            "{}/v2/organizations/{}/pipelines/{slug}",
            self.settings.base_url, self.settings.org
        )
    }

    pub fn rest_pipeline(&self, p: &Pipeline) -> Value {
        let url = self.pipeline_url(&p.slug);
        json!({
            "id": p.id,
            "graphql_id": graphql_id("Pipeline", p.id),
            "url": url,
            "web_url": format!("{}/{}/{}", self.settings.base_url, self.settings.org, p.slug),
            "name": p.name,
            "slug": p.slug,
            "repository": p.repository,
            "default_branch": p.default_branch,
            "provider": {"id": "github", "settings": {}},
            "builds_url": format!("{url}/builds"),
            "configuration": p.configuration,
            "env": p.env,
            "created_at": time(Some(p.created_at)),
            "cluster_id": self.settings.cluster_id,
            "visibility": "private",
        })
    }

    pub fn agent_url(&self, id: Uuid) -> String {
        format!(
            "{}/v2/organizations/{}/agents/{id}",
            self.settings.base_url, self.settings.org
        )
    }

    pub fn rest_agent(&self, a: &Agent) -> Value {
        let job = a
            .job_id
            .and_then(|id| self.jobs.get(&id))
            .map(|j| self.rest_job(j));
        json!({
            "id": a.id,
            "graphql_id": graphql_id("Agent", a.id),
            "url": self.agent_url(a.id),
            "web_url": format!("{}/organizations/{}/agents/{}", self.settings.base_url, self.settings.org, a.id),
            "name": a.name,
            "connection_state": a.connection_state.as_str(),
            "hostname": a.hostname,
            "ip_address": a.ip_address,
            "user_agent": a.user_agent,
            "version": a.version,
            "os_id": a.os,
            "arch": a.arch,
            "queue": a.tags.queue(),
            "creator": null,
            "job": job,
            "created_at": time(Some(a.created_at)),
            "connected_at": time(a.connected_at),
            "disconnected_at": time(a.disconnected_at),
            "lost_at": time(a.lost_at),
            "stopped_at": time(a.stopped_at),
            "last_job_finished_at": time(a.last_job_finished_at),
            "priority": a.priority.as_deref().and_then(|p| p.parse::<i64>().ok()),
            "meta_data": a.tags.to_strings(),
            "paused": a.paused,
        })
    }

    /// The job's environment as the agent receives it (reference §2.2); `agent` adds the
    /// agent-specific variables.
    pub fn job_env(&self, job: &Job, agent: Option<&Agent>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let build = self.builds.get(&job.build_id);
        let pipeline = build.and_then(|b| self.pipelines.get(&b.pipeline));
        if let Some(p) = pipeline {
            env.extend(p.env.clone());
        }
        if let Some(b) = build {
            env.extend(b.env.clone());
        }
        env.extend(job.step.env.clone());
        let mut set = |k: &str, v: String| {
            env.insert(k.to_string(), v);
        };
        set("BUILDKITE", "true".into());
        set("CI", "true".into());
        set("BUILDKITE_JOB_ID", job.id.to_string());
        set("BUILDKITE_ORGANIZATION_SLUG", self.settings.org.clone());
        set(
            "BUILDKITE_ORGANIZATION_ID",
            self.settings.org_id.to_string(),
        );
        set("BUILDKITE_CLUSTER_ID", self.settings.cluster_id.to_string());
        set("BUILDKITE_CLUSTER_NAME", "Default cluster".into());
        set("BUILDKITE_COMPUTE_TYPE", "self-hosted".into());
        set("BUILDKITE_PIPELINE_PROVIDER", "github".into());
        set(
            "BUILDKITE_COMMAND",
            job.step.command.clone().unwrap_or_default(),
        );
        set(
            "BUILDKITE_LABEL",
            job.step
                .label
                .clone()
                .or_else(|| job.step.command.clone())
                .unwrap_or_default(),
        );
        set(
            "BUILDKITE_STEP_KEY",
            job.step.key.clone().unwrap_or_default(),
        );
        set("BUILDKITE_STEP_ID", job.step_id.to_string());
        set("BUILDKITE_RETRY_COUNT", job.retries_count.to_string());
        set(
            "BUILDKITE_TIMEOUT",
            job.step
                .timeout_in_minutes
                .map_or("false".to_string(), |m| m.to_string()),
        );
        set("BUILDKITE_PULL_REQUEST", "false".into());
        set("BUILDKITE_PULL_REQUEST_BASE_BRANCH", String::new());
        set("BUILDKITE_PULL_REQUEST_REPO", String::new());
        set("BUILDKITE_TAG", String::new());
        set("BUILDKITE_ARTIFACT_PATHS", String::new());
        if let Some(plugins) = &job.step.plugins {
            set("BUILDKITE_PLUGINS", plugins.to_string());
        }
        if let Some((index, total)) = job.parallel {
            set("BUILDKITE_PARALLEL_JOB", index.to_string());
            set("BUILDKITE_PARALLEL_JOB_COUNT", total.to_string());
        }
        if let Some(p) = pipeline {
            set("BUILDKITE_PIPELINE_SLUG", p.slug.clone());
            set("BUILDKITE_PIPELINE_ID", p.id.to_string());
            set("BUILDKITE_PIPELINE_NAME", p.name.clone());
            set(
                "BUILDKITE_PIPELINE_DEFAULT_BRANCH",
                p.default_branch.clone(),
            );
            set("BUILDKITE_REPO", p.repository.clone());
        }
        if let Some(b) = build {
            set("BUILDKITE_BUILD_ID", b.id.to_string());
            set("BUILDKITE_BUILD_NUMBER", b.number.to_string());
            set("BUILDKITE_BUILD_URL", self.build_web_url(b));
            set("BUILDKITE_BRANCH", b.branch.clone());
            set("BUILDKITE_COMMIT", b.commit.clone());
            set("BUILDKITE_MESSAGE", b.message.clone());
            set("BUILDKITE_SOURCE", b.source.clone());
            set("BUILDKITE_BUILD_CREATOR", "Updraft emulator".into());
            set(
                "BUILDKITE_BUILD_CREATOR_EMAIL",
                "emulator@updraft.invalid".into(),
            );
            set("BUILDKITE_BUILD_AUTHOR", "Updraft emulator".into());
            set(
                "BUILDKITE_BUILD_AUTHOR_EMAIL",
                "emulator@updraft.invalid".into(),
            );
            if let Some((id, number)) = b.rebuilt_from {
                set("BUILDKITE_REBUILT_FROM_BUILD_ID", id.to_string());
                set("BUILDKITE_REBUILT_FROM_BUILD_NUMBER", number.to_string());
            }
        }
        if let Some(a) = agent {
            set("BUILDKITE_AGENT_ID", a.id.to_string());
            set("BUILDKITE_AGENT_NAME", a.name.clone());
            for (key, value) in &a.tags.0 {
                set(
                    &format!(
                        "BUILDKITE_AGENT_META_DATA_{}",
                        key.to_uppercase().replace('-', "_")
                    ),
                    value.clone(),
                );
            }
        }
        env
    }

    /// The Job object of accept / acquire (reference §2.1). `with_token` adds the job token.
    pub fn agent_job(&self, job: &Job, agent: Option<&Agent>, with_token: bool) -> Value {
        let mut step = Map::new();
        step.insert(
            "key".into(),
            job.step.key.clone().map_or(Value::Null, Value::String),
        );
        step.insert(
            "label".into(),
            job.step.label.clone().map_or(Value::Null, Value::String),
        );
        step.insert(
            "command".into(),
            Value::String(job.step.command.clone().unwrap_or_default()),
        );
        step.insert(
            "plugins".into(),
            job.step.plugins.clone().unwrap_or(Value::Null),
        );
        step.insert("env".into(), json!(job.step.env));
        step.insert("agents".into(), json!(job.step.agents.to_strings()));
        if let Some(minutes) = job.step.timeout_in_minutes {
            step.insert("timeout_in_minutes".into(), json!(minutes));
        }
        json!({
            "id": job.id,
            "endpoint": format!("{}/v3", self.settings.base_url),
            "state": job.state.as_str(),
            "env": self.job_env(job, agent),
            "step": Value::Object(step),
            "matrix_permutation": {},
            "chunks_max_size_bytes": self.settings.chunks_max_size_bytes,
            "chunks_interval_seconds": 1,
            "log_max_size_bytes": 1024u64 * 1024 * 1024,
            "token": if with_token { job.token.clone().unwrap_or_default() } else { String::new() },
            "exit_status": "",
            "signal": "",
            "signal_reason": "",
            "started_at": "",
            "finished_at": "",
            "runnable_at": job.runnable_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)).unwrap_or_default(),
            "chunks_failed_count": 0,
            "traceparent": "",
            "tracestate": "",
            "priority": job.step.priority,
        })
    }
}

/// A stable id per queue key (clusters have one queue per key).
pub fn queue_id(key: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("updraft-emulator/queue/{key}").as_bytes(),
    )
}
