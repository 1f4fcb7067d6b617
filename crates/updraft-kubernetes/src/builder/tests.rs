use super::*;
use crate::fleet_settings::PullPolicy;
use crate::pod_template::PodSource;
use crate::resources::ResourceClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{json, Value};
use updraft_backends::{JobContext, LaunchName};
use updraft_model::Secret as Credential;
use uuid::Uuid;

const TOKEN: &str = "bkaj_secret_job_token";

fn fleet() -> FleetTemplate {
    FleetTemplate {
        name: "linux".into(),
        namespace: "ci".into(),
        image: Some("ghcr.io/acme/agent:3".into()),
        image_pull_policy: Some(PullPolicy::IfNotPresent),
        service_account: Some("ci-jobs".into()),
        pod: PodSource::Bare,
        allow_overrides: true,
        resources: ResourceRequirements {
            requests: Some([("cpu".to_string(), Quantity("1".into()))].into()),
            ..Default::default()
        },
        resource_classes: [(
            "large".to_string(),
            ResourceClass {
                resources: ResourceRequirements {
                    requests: Some([("cpu".to_string(), Quantity("8".into()))].into()),
                    ..Default::default()
                },
                node_selector: [("pool".to_string(), "large".to_string())].into(),
                tolerations: Vec::new(),
            },
        )]
        .into(),
        default_resource_class: None,
        labels: [("team".to_string(), "platform".to_string())].into(),
        annotations: BTreeMap::new(),
        pool_drain_grace: None,
    }
}

fn spec(plugins: Option<Value>) -> LaunchSpec {
    let job_id = Uuid::new_v4();
    let mut env = BTreeMap::new();
    env.insert(
        "BUILDKITE_BUILD_URL".to_string(),
        "https://buildkite.com/acme/app/builds/7".to_string(),
    );
    if let Some(plugins) = plugins {
        env.insert("BUILDKITE_PLUGINS".to_string(), plugins.to_string());
    }
    LaunchSpec {
        name: LaunchName::for_job(job_id),
        job_id,
        fleet: "linux".into(),
        job: JobContext {
            queue: "linux".into(),
            agent_query_rules: vec!["queue=linux".into()],
            priority: 3,
            pipeline_slug: Some("app".into()),
            build_number: Some(7),
            build_branch: Some("main".into()),
            step_key: Some("test".into()),
            env,
            command: Some("make test".into()),
        },
        env: [
            ("BUILDKITE_AGENT_ENDPOINT", "https://agent.buildkite.com/v3"),
            ("BUILDKITE_AGENT_ACQUIRE_JOB", "x"),
            ("BUILDKITE_AGENT_NAME", "updraft-x"),
            ("UPDRAFT_FLEET", "linux"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        secrets: [("BUILDKITE_AGENT_TOKEN".to_string(), Credential::new(TOKEN))].into(),
        command: vec![
            "buildkite-agent".into(),
            "start".into(),
            "--acquire-job".into(),
            job_id.to_string(),
        ],
        deadline: Duration::from_secs(3600),
    }
}

fn built(spec: &LaunchSpec, fleet: &FleetTemplate) -> Result<Built, Refusal> {
    let plugin = step_plugin(spec)?;
    build(
        spec,
        plugin.as_ref(),
        &BuildInputs {
            fleet,
            base: match &fleet.pod {
                PodSource::Spec(spec) => Some(spec),
                _ => None,
            },
            step_template: None,
            scheduler_id: "updraft",
            job_ttl: Duration::from_secs(600),
        },
    )
}

fn pod(built: &Built) -> &PodSpec {
    built
        .job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn env_of(container: &Container) -> BTreeMap<String, Value> {
    container
        .env
        .iter()
        .flatten()
        .map(|v| (v.name.clone(), serde_json::to_value(v).unwrap()))
        .collect()
}

#[test]
fn a_plain_launch_is_one_job_with_an_agent_container_and_an_owned_secret_for_its_token() {
    let spec = spec(None);
    let built = built(&spec, &fleet()).expect("builds");
    let job = &built.job;
    assert_eq!(job.metadata.name.as_deref(), Some(spec.name.as_str()));
    assert_eq!(job.metadata.namespace.as_deref(), Some("ci"));
    let job_spec = job.spec.as_ref().unwrap();
    assert_eq!(job_spec.backoff_limit, Some(0));
    assert_eq!(job_spec.active_deadline_seconds, Some(3600));
    assert_eq!(job_spec.ttl_seconds_after_finished, Some(600));
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[labels::JOB_UUID], spec.job_id.to_string());
    assert_eq!(labels["team"], "platform");
    let template_meta = job_spec.template.metadata.as_ref().unwrap();
    assert_eq!(template_meta.labels.as_ref(), Some(labels));
    assert_eq!(
        template_meta.annotations.as_ref().unwrap()[labels::SAFE_TO_EVICT],
        "false"
    );

    let pod = pod(&built);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.service_account_name.as_deref(), Some("ci-jobs"));
    assert_eq!(pod.containers.len(), 1);
    let agent = &pod.containers[0];
    assert_eq!(agent.name, "agent");
    assert_eq!(agent.image.as_deref(), Some("ghcr.io/acme/agent:3"));
    assert_eq!(agent.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(agent.command.as_ref(), Some(&spec.command));
    assert_eq!(
        agent.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"],
        Quantity("1".into())
    );
    let env = env_of(agent);
    assert_eq!(env["BUILDKITE_AGENT_ACQUIRE_JOB"]["value"], "x");
    assert_eq!(env["BUILDKITE_BUILD_PATH"]["value"], "/workspace/build");
    assert_eq!(
        env["BUILDKITE_AGENT_TOKEN"]["valueFrom"]["secretKeyRef"],
        json!({"name": spec.name.as_str(), "key": "BUILDKITE_AGENT_TOKEN", "optional": false})
    );
    assert!(agent
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.mount_path == "/workspace"));
    assert!(pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .any(|v| v.name == "workspace" && v.empty_dir.is_some()));

    let job_json = serde_json::to_string(&built.job).unwrap();
    assert!(
        !job_json.contains(TOKEN),
        "the token must only be in the Secret's data"
    );
    assert!(!job_json.contains("bkct_"), "no cluster token");
    let secret = &built.secret;
    assert_eq!(secret.metadata.name.as_deref(), Some(spec.name.as_str()));
    assert_eq!(
        secret.data.as_ref().unwrap()["BUILDKITE_AGENT_TOKEN"].0,
        TOKEN.as_bytes()
    );
    assert_eq!(secret.immutable, Some(true));
    assert!(!format!("{secret:?}").is_empty());
}

fn agent_stack_k8s_step() -> Value {
    json!([{"github.com/buildkite-plugins/kubernetes-buildkite-plugin": {
        "metadata": {"labels": {"app": "tests"}, "annotations": {"note": "x"}},
        "checkout": {"skip": true, "cloneFlags": "--depth=1"},
        "gitEnvFrom": [{"secretRef": {"name": "git-ssh-key"}}],
        "sidecars": [{"image": "postgres:16", "env": [{"name": "POSTGRES_PASSWORD", "value": "pw"}]}],
        "extraVolumeMounts": [{"name": "cache", "mountPath": "/cache"}],
        "podSpec": {
            "volumes": [{"name": "cache", "emptyDir": {}}],
            "containers": [{"name": "tests", "image": "alpine:latest", "command": ["echo \"MOUNTAIN=$$MOUNTAIN\""]}]
        },
        "podSpecPatch": {"containers": [{"name": "tests", "env": [{"name": "MOUNTAIN", "value": "cotopaxi"}]}]},
        "jobActiveDeadlineSeconds": 600
    }}])
}

#[test]
fn an_agent_stack_k8s_step_becomes_the_agent_container_with_native_sidecars() {
    let spec = spec(Some(agent_stack_k8s_step()));
    let built = built(&spec, &fleet()).expect("builds");
    let pod = pod(&built);
    assert_eq!(
        pod.containers.len(),
        1,
        "the step's container folds into the agent"
    );
    let agent = &pod.containers[0];
    assert_eq!(agent.name, "agent");
    assert_eq!(agent.image.as_deref(), Some("alpine:latest"));
    assert_eq!(
        agent.command.as_ref(),
        Some(&spec.command),
        "the agent still runs the agent"
    );
    let env = env_of(agent);
    assert_eq!(
        env[JOB_COMMAND_ENV]["value"],
        "echo \"MOUNTAIN=$$MOUNTAIN\""
    );
    assert_eq!(env["MOUNTAIN"]["value"], "cotopaxi");
    assert_eq!(env["BUILDKITE_SKIP_CHECKOUT"]["value"], "true");
    assert_eq!(env["BUILDKITE_GIT_CLONE_FLAGS"]["value"], "--depth=1");
    assert_eq!(
        env[APPLIED_PLUGINS_ENV]["value"],
        "github.com/buildkite-plugins/kubernetes-buildkite-plugin"
    );
    assert_eq!(
        agent.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        "git-ssh-key"
    );
    let mounts: Vec<&str> = agent
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(mounts, ["/cache", "/workspace"]);

    let sidecars = pod.init_containers.as_ref().expect("sidecars");
    assert_eq!(sidecars[0].name, "sidecar-0");
    assert_eq!(sidecars[0].restart_policy.as_deref(), Some("Always"));
    assert!(sidecars[0]
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == "/workspace"));
    assert!(pod.volumes.iter().flatten().any(|v| v.name == "cache"));

    let job = &built.job;
    assert_eq!(job.metadata.labels.as_ref().unwrap()["app"], "tests");
    assert_eq!(job.metadata.annotations.as_ref().unwrap()["note"], "x");
    assert_eq!(
        job.spec.as_ref().unwrap().active_deadline_seconds,
        Some(600)
    );
}

#[test]
fn the_step_image_replaces_the_agent_image() {
    let mut spec = spec(None);
    spec.job
        .env
        .insert("BUILDKITE_IMAGE".into(), "node:22".into());
    let built = built(&spec, &fleet()).expect("builds");
    assert_eq!(pod(&built).containers[0].image.as_deref(), Some("node:22"));
}

#[test]
fn patches_may_not_touch_the_agents_command_or_token() {
    for (patch, expected) in [
        (
            json!({"containers": [{"name": "agent", "command": ["sh", "-c", "env"]}]}),
            "command or arguments",
        ),
        (
            json!({"containers": [{"name": "agent", "args": ["--debug"]}]}),
            "command or arguments",
        ),
        (
            json!({"containers": [{"name": "agent", "env": [{"name": "BUILDKITE_AGENT_TOKEN", "value": "stolen"}]}]}),
            "token or credentials",
        ),
        (
            json!({"containers": [{"name": "agent", "$patch": "delete"}]}),
            "may not be removed",
        ),
        (
            json!({"containers": [{"name": "miner", "image": "x"}]}),
            "run it as a sidecar",
        ),
    ] {
        let spec = spec(Some(json!([{"kubernetes": {"podSpecPatch": patch}}])));
        let refusal = built(&spec, &fleet()).expect_err("refused");
        assert!(
            refusal.field.starts_with("kubernetes.podSpecPatch"),
            "{refusal}"
        );
        assert!(refusal.reason.contains(expected), "{refusal}");
    }
    let spec = spec(Some(
        json!([{"kubernetes": {"podSpecPatch": {"containers": [{"name": "agent", "env": [{"name": "DEBUG", "value": "1"}]}]}}}]),
    ));
    let built = built(&spec, &fleet()).expect("a patch may add variables");
    assert_eq!(env_of(&pod(&built).containers[0])["DEBUG"]["value"], "1");
}

#[test]
fn a_fleet_can_forbid_overrides() {
    let mut fleet = fleet();
    fleet.allow_overrides = false;
    let refusal = built(
        &spec(Some(
            json!([{"kubernetes": {"metadata": {"labels": {"a": "b"}}}}]),
        )),
        &fleet,
    )
    .unwrap_err();
    assert_eq!(refusal.field, "kubernetes");
    assert!(
        refusal.reason.contains("allow_overrides = false"),
        "{refusal}"
    );
    let mut with_image = spec(None);
    with_image
        .job
        .env
        .insert("BUILDKITE_IMAGE".into(), "node:22".into());
    assert_eq!(built(&with_image, &fleet).unwrap_err().field, "image");
    assert!(built(&spec(None), &fleet).is_ok());
}

#[test]
fn resource_classes_come_from_the_job_tag_or_the_fleet_default() {
    let mut spec = spec(None);
    spec.job
        .agent_query_rules
        .push("resource_class=large".into());
    let built_large = built(&spec, &fleet()).expect("builds");
    let large = pod(&built_large);
    assert_eq!(
        large.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["cpu"],
        Quantity("8".into())
    );
    assert_eq!(large.node_selector.as_ref().unwrap()["pool"], "large");
    assert_eq!(
        built_large.job.metadata.labels.as_ref().unwrap()["tag.buildkite.com/resource_class"],
        "large"
    );

    spec.job.agent_query_rules.pop();
    spec.job
        .agent_query_rules
        .push("resource_class=huge".into());
    let refusal = built(&spec, &fleet()).unwrap_err();
    assert_eq!(refusal.field, "resource_class");
    assert!(
        refusal
            .reason
            .contains("no resource class \"huge\" (it has: large)"),
        "{refusal}"
    );

    let mut fleet = fleet();
    fleet.default_resource_class = Some("large".into());
    spec.job.agent_query_rules.pop();
    let pod_default = built(&spec, &fleet).expect("builds");
    assert_eq!(
        pod(&pod_default).node_selector.as_ref().unwrap()["pool"],
        "large"
    );
}

#[test]
fn steps_that_cannot_be_built_are_refused_with_the_field() {
    let two = json!([{"kubernetes": {"podSpec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}}]);
    let refusal = built(&spec(Some(two)), &fleet()).unwrap_err();
    assert_eq!(refusal.field, "kubernetes.podSpec.containers");

    let bad_label = json!([{"kubernetes": {"metadata": {"labels": {"team": "a b"}}}}]);
    assert_eq!(
        built(&spec(Some(bad_label)), &fleet()).unwrap_err().field,
        "kubernetes.metadata.labels.team"
    );

    let unknown =
        json!([{"kubernetes": {"podSpec": {"containers": [{"name": "a", "imagee": "x"}]}}}]);
    let refusal = built(&spec(Some(unknown)), &fleet()).unwrap_err();
    assert_eq!(
        refusal.to_string(),
        "kubernetes.podSpec.containers[0].imagee: unknown field"
    );

    let token = json!([{"kubernetes": {"podSpec": {"containers": [{"name": "a", "env": [{"name": "BUILDKITE_AGENT_TOKEN", "value": "x"}]}]}}}]);
    assert!(built(&spec(Some(token)), &fleet())
        .unwrap_err()
        .reason
        .contains("set by Updraft"));
}

#[test]
fn a_fleet_template_is_the_base_and_the_step_merges_over_it() {
    let mut fleet = fleet();
    fleet.image = None;
    fleet.pod = PodSource::Spec(std::sync::Arc::new(
        crate::pod_template::from_value(&json!({
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "containers": [{"name": "agent", "image": "agent:arm", "env": [{"name": "BUILDKITE_BUILD_PATH", "value": "/builds"}],
                            "resources": {"requests": {"memory": "2Gi"}}}],
            "initContainers": [{"name": "dind", "image": "docker:dind", "restartPolicy": "Always"}]
        }))
        .unwrap(),
    ));
    let step = json!([{"kubernetes": {"podSpec": {"tolerations": [{"key": "arm", "operator": "Exists"}], "containers": [{"name": "main", "image": "rust:1"}]}}}]);
    let built = built(&spec(Some(step)), &fleet).expect("builds");
    let pod = pod(&built);
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["kubernetes.io/arch"],
        "arm64",
        "the fleet's placement stays"
    );
    assert_eq!(pod.tolerations.as_ref().unwrap().len(), 1);
    let agent = &pod.containers[0];
    assert_eq!(agent.image.as_deref(), Some("rust:1"));
    let requests = agent.resources.as_ref().unwrap().requests.as_ref().unwrap();
    assert_eq!(
        (&requests["cpu"], &requests["memory"]),
        (&Quantity("1".into()), &Quantity("2Gi".into()))
    );
    assert_eq!(
        env_of(agent)["BUILDKITE_BUILD_PATH"]["value"],
        "/builds",
        "the template's build path is kept"
    );
    let dind = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(dind.name, "dind");
    assert!(
        dind.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/workspace"),
        "the template's sidecar shares the workspace"
    );
}
