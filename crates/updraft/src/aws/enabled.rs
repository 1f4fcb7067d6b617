//! The AWS backends in this build: reading `[aws]` and every CodeBuild and ECS fleet's table
//! into the config's list of problems, resolving `ssm:`/`secretsmanager:` references to the
//! scheduler's tokens before the config is read, opening the backends, the SQS push source,
//! and the reference sections.

use anyhow::Context;
use futures::future::BoxFuture;
use futures::FutureExt;
use prometheus_client::registry::Registry;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use updraft_aws::metrics::AwsMetrics;
use updraft_aws::secrets::SecretRef;
use updraft_aws::settings::{AwsSettings, CodeBuildFleetSettings, EcsFleetSettings};
use updraft_aws::sqs_push::{Handled, Sink, SqsPush};
use updraft_aws::{AwsClients, BackendOptions, CodeBuildBackend, EcsBackend};
use updraft_backends::Backend;
use updraft_config::reference::Reference;
use updraft_config::{read as read_settings, schema_for, Errors, Path};
use updraft_scheduler::{Config, SchedulerHandle, TakeIn};

/// `[aws]` and the fleets of each AWS backend, by fleet name.
pub struct Settings {
    aws: AwsSettings,
    codebuild: BTreeMap<String, CodeBuildFleetSettings>,
    ecs: BTreeMap<String, EcsFleetSettings>,
    /// Shared by the backends and the SQS loop, served on `/metrics` (`metrics`).
    metrics: AwsMetrics,
}

/// The table the CodeBuild and ECS backends share.
pub const SECTION: &str = "aws";

fn aws_section(raw: &Value, errors: &mut Errors) -> Option<AwsSettings> {
    let empty = Value::Object(Default::default());
    read_settings::<AwsSettings>(
        raw.get(SECTION).unwrap_or(&empty),
        &Path::root().key(SECTION),
        errors,
    )
}

/// Read `[aws]` and the fleets' tables; `None` when they cannot be read at all.
pub fn read(raw: &Value, errors: &mut Errors) -> Option<Settings> {
    let fleets = raw
        .get("fleet")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, fleet) in fleets.enumerate() {
        if fleet.get("backend").and_then(Value::as_str) == Some(SECTION) {
            errors.push(
                &Path::root().key("fleet").index(i).key("backend"),
                "\"aws\" is the table the AWS backends share; use \"codebuild\" or \"ecs\"",
            );
        }
    }
    let aws = aws_section(raw, errors);
    let mut codebuild = BTreeMap::new();
    for (at, name, table) in Config::fleet_backend_tables(raw, "codebuild") {
        if let Some(fleet) = read_settings::<CodeBuildFleetSettings>(&table, &at, errors) {
            codebuild.insert(name, fleet);
        }
    }
    let mut ecs = BTreeMap::new();
    for (at, name, table) in Config::fleet_backend_tables(raw, "ecs") {
        if let Some(fleet) = read_settings::<EcsFleetSettings>(&table, &at, errors) {
            ecs.insert(name, fleet);
        }
    }
    Some(Settings {
        aws: aws?,
        codebuild,
        ecs,
        metrics: AwsMetrics::default(),
    })
}

/// Read the secrets the scheduler's config names by reference (`[buildkite]
/// agent_token_from`, `[push] webhook_token_from`) into it. Problems are added with their
/// paths; a value never is.
pub async fn resolve_references(
    config: &mut Config,
    settings: Option<&Settings>,
    errors: &mut Errors,
) {
    let agent = config.buildkite.agent_token_from.clone();
    let webhook = config.push.webhook_token_from.clone();
    if agent.is_none() && webhook.is_none() {
        return;
    }
    let aws = settings.map(|s| s.aws.clone()).unwrap_or_default();
    let clients = AwsClients::load(&aws).await;
    let resolve = |reference: String, at: Path| {
        let clients = &clients;
        async move {
            let resolved = match reference.parse::<SecretRef>() {
                Ok(reference) => reference.resolve(clients).await,
                Err(error) => Err(error),
            };
            resolved.map_err(|error| (at, error))
        }
    };
    if let Some(reference) = agent {
        match resolve(
            reference,
            Path::root().key("buildkite").key("agent_token_from"),
        )
        .await
        {
            Ok(secret) => config.buildkite.agent_token = secret,
            Err((at, error)) => errors.push(&at, error),
        }
    }
    if let Some(reference) = webhook {
        match resolve(
            reference,
            Path::root().key("push").key("webhook_token_from"),
        )
        .await
        {
            Ok(secret) => config.push.webhook_token = Some(secret),
            Err((at, error)) => errors.push(&at, error),
        }
    }
}

/// Open the AWS backends some fleet uses, checking each platform first.
pub async fn open(
    settings: &Settings,
    backends: &mut BTreeMap<String, Arc<dyn Backend>>,
) -> anyhow::Result<()> {
    if settings.codebuild.is_empty() && settings.ecs.is_empty() {
        return Ok(());
    }
    let clients = AwsClients::load(&settings.aws).await;
    let options = BackendOptions::from_settings(&settings.aws);
    let metrics = settings.metrics.clone();
    if !settings.codebuild.is_empty() {
        let backend = CodeBuildBackend::codebuild(
            &clients,
            &settings.aws,
            settings.codebuild.clone(),
            options.clone(),
            metrics.clone(),
        )
        .await
        .context("opening the codebuild backend")?;
        backends.insert("codebuild".into(), Arc::new(backend));
    }
    if !settings.ecs.is_empty() {
        let backend = EcsBackend::ecs(
            &clients,
            &settings.aws,
            settings.ecs.clone(),
            options,
            metrics,
        )
        .await
        .context("opening the ecs backend")?;
        backends.insert("ecs".into(), Arc::new(backend));
    }
    Ok(())
}

/// The AWS series for `/metrics`, when some part of AWS is in use.
pub fn metrics(settings: &Settings) -> Option<Registry> {
    let used = !settings.codebuild.is_empty()
        || !settings.ecs.is_empty()
        || settings.aws.sqs_push.is_some();
    used.then(|| {
        let mut registry = Registry::default();
        settings.metrics.register_in(&mut registry);
        registry
    })
}

/// Long-poll `[aws.sqs_push]` into the scheduler until the queue cannot be used; never
/// resolves when no queue is configured.
pub fn push_source<'a>(
    settings: &'a Settings,
    scheduler: &'a SchedulerHandle,
) -> BoxFuture<'a, anyhow::Result<()>> {
    let Some(sqs) = settings.aws.sqs_push.clone() else {
        return std::future::pending().boxed();
    };
    async move {
        let queue = sqs.queue_url.clone();
        let clients = AwsClients::load(&settings.aws).await;
        let push = SqsPush::new(clients.sqs(), sqs, settings.metrics.clone());
        let sink = move |event| scheduler.take_in(event).map(handled).boxed();
        tracing::info!(queue, "taking push events from SQS");
        push.run(&sink as &Sink<'_>, std::future::pending())
            .await
            .with_context(|| format!("aws.sqs_push: the queue {queue} cannot be used"))
    }
    .boxed()
}

/// What `SchedulerHandle::take_in` answered, as the SQS loop acts on it.
fn handled(taken: TakeIn) -> Handled {
    match taken {
        TakeIn::Recorded => Handled::Recorded,
        TakeIn::Duplicate => Handled::Duplicate,
        TakeIn::NotOurs(_) => Handled::Settled("not_ours"),
        TakeIn::Gone => Handled::Settled("gone"),
        TakeIn::Ignored => Handled::Settled("ignored"),
        TakeIn::NotLeading => Handled::Later,
    }
}

/// The reference sections of the AWS tables.
pub fn reference(doc: &mut Reference) {
    doc.section("[aws]", &schema_for::<AwsSettings>());
    doc.section("[fleet.codebuild]", &schema_for::<CodeBuildFleetSettings>());
    doc.section("[fleet.ecs]", &schema_for::<EcsFleetSettings>());
}

#[cfg(test)]
mod tests {
    use crate::backends::load;

    const BASE: &str = "[buildkite]\nagent_token = \"bkct_test\"\n\n";

    async fn problems(text: &str) -> Vec<String> {
        match load(&format!("{BASE}{text}"), std::iter::empty()).await {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[tokio::test]
    async fn aws_tables_are_read_with_every_problem_named_by_its_path() {
        let found = problems(
            "[aws]\nregion = \"eu-west-1\"\nbogus = 1\n[aws.sqs_push]\nqueue_url = \"https://sqs\"\nwait = \"60s\"\n\n\
             [[fleet]]\nname = \"cb\"\nqueue = \"q\"\nbackend = \"codebuild\"\ntemplate = { command = [\"agent\"] }\n\
             [fleet.codebuild]\nmode = \"relay\"\nallowed_images = [\"\"]\n\n\
             [[fleet]]\nname = \"ecs\"\nqueue = \"q\"\nbackend = \"ecs\"\ntemplate = { command = [\"agent\"] }\n\
             [fleet.ecs]\ncluster = \"c\"\ntask_definition = \"t\"\nlaunch_type = \"FARGATE\"\n\n\
             [[fleet]]\nname = \"shared\"\nqueue = \"q\"\nbackend = \"aws\"\ntemplate = { command = [\"agent\"] }\n",
        )
        .await;
        for expected in [
            "aws.bogus: unknown key",
            "aws.sqs_push.wait: SQS long polls wait at most 20s",
            "fleet[0].codebuild.project: missing; it is required",
            "fleet[1].ecs.subnets: Fargate tasks need at least one subnet",
            "fleet[2].backend: \"aws\" is the table the AWS backends share; use \"codebuild\" or \"ecs\"",
        ] {
            assert!(found.iter().any(|e| e == expected), "missing {expected:?} in {found:#?}");
        }
    }

    #[tokio::test]
    async fn a_good_aws_config_loads() {
        let found = problems(
            "[aws]\nregion = \"eu-west-1\"\n\n[[fleet]]\nname = \"cb\"\nqueue = \"q\"\nbackend = \"codebuild\"\n\
             template = { command = [\"agent\"] }\n[fleet.codebuild]\nproject = \"ci\"\n",
        )
        .await;
        assert!(found.is_empty(), "{found:#?}");
    }
}
