//! `backend = "codebuild"`: each launch is a build of the fleet's CodeBuild project, started
//! with StartBuild under an idempotency token derived from the launch name (CodeBuild keeps
//! it 5 minutes; the backend's state makes the rest idempotent), read with BatchGetBuilds
//! and stopped with StopBuild. CodeBuild builds carry no tags, so the launch's labels go in
//! as plain variables (`UPDRAFT_LAUNCH`, `UPDRAFT_FLEET`), which also lets a build whose
//! start answer was lost be found again.

mod observe;
pub mod request;

use crate::errors::{classify, AwsError, ErrorClass};
use crate::platform::{LaunchLabels, LineStyle, Observed, Platform, RelayedJob, Started};
use crate::settings::{CodeBuildFleetSettings, RunMode};
use async_trait::async_trait;
use aws_sdk_codebuild::types::{
    ComputeType, EnvironmentVariable, EnvironmentVariableType, SortOrderType,
};
use request::{StartRequest, COMMAND_VARIABLE, LAUNCH_VARIABLE};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use updraft_backends::{LaunchName, LaunchSpec};

pub const KIND: &str = "codebuild";
/// BatchGetBuilds takes at most this many ids.
const BATCH: usize = 100;
/// How many of a project's newest builds are searched for a lost launch.
const FIND_LIMIT: usize = 500;
/// "The idempotencyToken is valid for 5 minutes."
const TOKEN_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// The CodeBuild side of the backend: one client and each fleet's settings.
pub struct CodeBuild {
    client: aws_sdk_codebuild::Client,
    fleets: BTreeMap<String, CodeBuildFleetSettings>,
}

impl CodeBuild {
    pub fn new(
        client: aws_sdk_codebuild::Client,
        fleets: BTreeMap<String, CodeBuildFleetSettings>,
    ) -> CodeBuild {
        CodeBuild { client, fleets }
    }

    /// Check that every fleet's project exists and can be read (once, at start-up).
    pub async fn preflight(&self) -> Result<(), AwsError> {
        let projects: Vec<String> = self.fleets.values().map(|f| f.project.clone()).collect();
        if projects.is_empty() {
            return Ok(());
        }
        let answer = self
            .client
            .batch_get_projects()
            .set_names(Some(projects))
            .send()
            .await
            .map_err(|error| classify("BatchGetProjects", &error))?;
        if let Some(missing) = answer.projects_not_found().first() {
            let fleet = self
                .fleets
                .iter()
                .find(|(_, f)| f.project == *missing)
                .map(|(name, _)| name.as_str())
                .unwrap_or("?");
            return Err(AwsError {
                operation: "BatchGetProjects",
                code: Some("ResourceNotFoundException".into()),
                class: ErrorClass::Fatal,
                detail: format!("fleet {fleet}: CodeBuild project {missing:?} does not exist"),
            });
        }
        Ok(())
    }

    fn fleet(&self, fleet: &str) -> Result<&CodeBuildFleetSettings, String> {
        self.fleets
            .get(fleet)
            .ok_or_else(|| format!("fleet {fleet} has no [fleet.codebuild] table"))
    }

    fn request(&self, fleet_name: &str, inputs: Inputs<'_>) -> Result<String, String> {
        let fleet = self.fleet(fleet_name)?;
        let overrides = request::overrides(fleet_name, fleet, inputs.job_env)?;
        let request = StartRequest {
            project: fleet.project.clone(),
            buildspec: inputs.buildspec,
            variables: request::variables(inputs.env, inputs.labels, inputs.secrets),
            image: overrides.image,
            compute_type: overrides.compute_type,
            privileged_mode: overrides.privileged_mode,
            timeout_minutes: inputs.timeout_minutes,
        };
        serde_json::to_string(&request)
            .map_err(|e| format!("cannot record the StartBuild request: {e}"))
    }
}

/// What a StartBuild request is made of.
struct Inputs<'a> {
    /// The build's variables.
    env: &'a BTreeMap<String, String>,
    /// The job's environment, where its `CB_*` overrides are.
    job_env: &'a BTreeMap<String, String>,
    buildspec: String,
    labels: &'a LaunchLabels,
    /// Variable → SSM parameter name.
    secrets: &'a BTreeMap<String, String>,
    timeout_minutes: Option<i32>,
}

#[async_trait]
impl Platform for CodeBuild {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn mode(&self, fleet: &str) -> Option<RunMode> {
        self.fleets.get(fleet).map(|f| f.mode)
    }

    fn line_style(&self) -> LineStyle {
        LineStyle::CodeBuild
    }

    fn token_lifetime(&self) -> Duration {
        TOKEN_LIFETIME
    }

    fn cancel_grace(&self, fleet: &str) -> Duration {
        self.fleets
            .get(fleet)
            .map(|f| f.cancel_grace.get())
            .unwrap_or(Duration::from_secs(5))
    }

    fn check(&self, fleet: &str, env: &BTreeMap<String, String>) -> Result<(), String> {
        request::overrides(fleet, self.fleet(fleet)?, env).map(drop)
    }

    fn agent_request(
        &self,
        spec: &LaunchSpec,
        secrets: &BTreeMap<String, String>,
    ) -> Result<String, String> {
        let fleet = self.fleet(&spec.fleet)?;
        self.request(
            &spec.fleet,
            Inputs {
                env: &spec.env,
                job_env: &spec.job.env,
                buildspec: request::agent_buildspec(fleet, &spec.command),
                labels: &LaunchLabels::of(spec),
                secrets,
                timeout_minutes: Some(request::timeout_minutes(spec.deadline)),
            },
        )
    }

    fn relay_request(&self, fleet: &str, job: &RelayedJob) -> Result<String, String> {
        let settings = self.fleet(fleet)?;
        let mut env = job.env.clone();
        env.insert(COMMAND_VARIABLE.into(), job.command.clone());
        self.request(
            fleet,
            Inputs {
                env: &env,
                job_env: &job.env,
                buildspec: request::relay_buildspec(settings),
                labels: &job.labels,
                secrets: &BTreeMap::new(),
                timeout_minutes: None,
            },
        )
    }

    async fn start(
        &self,
        _name: &LaunchName,
        _fleet: &str,
        request: &str,
        token: &str,
    ) -> Result<Started, AwsError> {
        let request: StartRequest = serde_json::from_str(request).map_err(|e| AwsError {
            operation: "StartBuild",
            code: None,
            class: ErrorClass::Invalid,
            detail: format!("the recorded request cannot be read: {e}"),
        })?;
        let variables = request
            .variables
            .iter()
            .map(|v| {
                EnvironmentVariable::builder()
                    .name(&v.name)
                    .value(&v.value)
                    .r#type(if v.from_parameter_store {
                        EnvironmentVariableType::ParameterStore
                    } else {
                        EnvironmentVariableType::Plaintext
                    })
                    .build()
                    .expect("name and value are set")
            })
            .collect();
        let answer = self
            .client
            .start_build()
            .project_name(&request.project)
            .idempotency_token(token)
            .buildspec_override(&request.buildspec)
            .set_environment_variables_override(Some(variables))
            .set_image_override(request.image.clone())
            .set_compute_type_override(request.compute_type.as_deref().map(ComputeType::from))
            .set_privileged_mode_override(request.privileged_mode)
            .set_timeout_in_minutes_override(request.timeout_minutes)
            .send()
            .await
            .map_err(|error| classify("StartBuild", &error))?;
        let id = answer
            .build_value()
            .and_then(|b| b.id())
            .ok_or_else(|| AwsError {
                operation: "StartBuild",
                code: None,
                class: ErrorClass::Unavailable,
                detail: "the answer named no build".into(),
            })?;
        Ok(Started {
            id: id.to_string(),
            extra: None,
        })
    }

    async fn describe(&self, ids: &[String]) -> Result<HashMap<String, Observed>, AwsError> {
        let mut observed = HashMap::new();
        for batch in ids.chunks(BATCH) {
            let answer = self
                .client
                .batch_get_builds()
                .set_ids(Some(batch.to_vec()))
                .send()
                .await
                .map_err(|error| classify("BatchGetBuilds", &error))?;
            for build in answer.builds() {
                if let Some(id) = build.id() {
                    observed.insert(id.to_string(), observe::observe(build));
                }
            }
        }
        Ok(observed)
    }

    async fn stop(&self, _fleet: &str, id: &str, _reason: &str) -> Result<(), AwsError> {
        match self.client.stop_build().id(id).send().await {
            Ok(_) => Ok(()),
            Err(error) => {
                let error = classify("StopBuild", &error);
                // A build that has ended or is gone needs no stopping.
                if error.is_not_found() || error.class == ErrorClass::Invalid {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }

    async fn find(&self, fleet: &str, name: &LaunchName) -> Result<Option<String>, AwsError> {
        let Some(settings) = self.fleets.get(fleet) else {
            return Ok(None);
        };
        let mut token: Option<String> = None;
        let mut searched = 0;
        loop {
            let page = self
                .client
                .list_builds_for_project()
                .project_name(&settings.project)
                .sort_order(SortOrderType::Descending)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|error| classify("ListBuildsForProject", &error))?;
            let ids = page.ids().to_vec();
            searched += ids.len();
            for batch in ids.chunks(BATCH) {
                let answer = self
                    .client
                    .batch_get_builds()
                    .set_ids(Some(batch.to_vec()))
                    .send()
                    .await
                    .map_err(|error| classify("BatchGetBuilds", &error))?;
                let found = answer.builds().iter().find(|build| {
                    build.environment().is_some_and(|env| {
                        env.environment_variables()
                            .iter()
                            .any(|v| v.name() == LAUNCH_VARIABLE && v.value() == name.as_str())
                    })
                });
                if let Some(id) = found.and_then(|b| b.id()) {
                    return Ok(Some(id.to_string()));
                }
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() || searched >= FIND_LIMIT {
                return Ok(None);
            }
        }
    }

    async fn clean_up(&self, _extra: &str) -> Result<(), AwsError> {
        Ok(())
    }
}

impl crate::AwsBackend<CodeBuild> {
    /// The CodeBuild backend for `fleets` (by fleet name): checks that every project exists,
    /// then opens the backend's state.
    pub async fn codebuild(
        clients: &crate::AwsClients,
        settings: &crate::settings::AwsSettings,
        fleets: BTreeMap<String, CodeBuildFleetSettings>,
        options: crate::BackendOptions,
        metrics: crate::metrics::AwsMetrics,
    ) -> Result<crate::CodeBuildBackend, updraft_backends::BackendError> {
        let platform = CodeBuild::new(clients.codebuild(), fleets);
        platform
            .preflight()
            .await
            .map_err(|error| error.into_backend(KIND, ""))?;
        crate::AwsBackend::open(platform, clients, settings, options, metrics).await
    }
}
