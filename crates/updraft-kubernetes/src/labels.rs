//! The labels and annotations Updraft puts on every Job, pod and Secret, and the rules
//! Kubernetes holds label keys and values to. Buildkite facts use the `buildkite.com/` keys
//! agent-stack-k8s users already know; Updraft's own use `updraft.dev/`. Because pipeline,
//! build, step, queue and every agent tag are labels (not annotations, as agent-stack-k8s has
//! them), any label-based cost tool (Kubecost, OpenCost, cloud cost allocation by label) can
//! attribute the cost of each job.

use std::collections::BTreeMap;
use updraft_backends::{LaunchName, LaunchSpec};

/// Marks everything Updraft creates; the watch selects on it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "updraft";
/// The scheduler that created an object (its `scheduler_id`); each scheduler watches only its own.
pub const SCHEDULER: &str = "updraft.dev/scheduler";
pub const FLEET: &str = "updraft.dev/fleet";
/// Marks the pods of a fleet's warm pool, with the fleet as its value.
pub const POOL: &str = "updraft.dev/pool";
pub const JOB_UUID: &str = "buildkite.com/job-uuid";
pub const QUEUE: &str = "buildkite.com/queue";
pub const PIPELINE: &str = "buildkite.com/pipeline-slug";
pub const BUILD_NUMBER: &str = "buildkite.com/build-number";
pub const STEP_KEY: &str = "buildkite.com/step-key";
/// Each agent tag of the job becomes `tag.buildkite.com/<key>`.
pub const TAG_PREFIX: &str = "tag.buildkite.com/";

pub const BUILD_URL: &str = "buildkite.com/build-url";
pub const JOB_URL: &str = "buildkite.com/job-url";
pub const PRIORITY: &str = "buildkite.com/job-priority";
pub const BUILD_BRANCH: &str = "buildkite.com/build-branch";
/// Set on a Job that Updraft stopped, so its end reads "stopped", not "deadline exceeded".
pub const STOPPED: &str = "updraft.dev/stopped";
/// Keeps the cluster autoscaler from evicting a pod that runs a job.
pub const SAFE_TO_EVICT: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";

/// The label selector of everything one scheduler created.
pub fn selector(scheduler_id: &str) -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},{SCHEDULER}={scheduler_id}")
}

/// The labels of a pool member's pod and Secret: Updraft's, the fleet, and the pool mark.
/// `None` when the fleet's name is no label value as it is.
pub fn for_pool_member(fleet: &str, scheduler_id: &str) -> Option<BTreeMap<String, String>> {
    is_label_value(fleet).then(|| {
        [
            (MANAGED_BY, MANAGED_BY_VALUE),
            (SCHEDULER, scheduler_id),
            (FLEET, fleet),
            (POOL, fleet),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
    })
}

/// The label selector of one fleet's pool members.
pub fn pool_selector(fleet: &str, scheduler_id: &str) -> String {
    format!("{},{POOL}={fleet}", selector(scheduler_id))
}

/// The labels every object of a launch carries.
pub fn for_launch(spec: &LaunchSpec, scheduler_id: &str) -> BTreeMap<String, String> {
    let job = &spec.job;
    let mut labels = BTreeMap::new();
    let mut put = |key: String, raw: &str| {
        if let Some(value) = label_value(raw) {
            labels.insert(key, value);
        }
    };
    put(MANAGED_BY.into(), MANAGED_BY_VALUE);
    put(SCHEDULER.into(), scheduler_id);
    put(FLEET.into(), &spec.fleet);
    put(JOB_UUID.into(), &spec.job_id.to_string());
    put(QUEUE.into(), &job.queue);
    if let Some(slug) = &job.pipeline_slug {
        put(PIPELINE.into(), slug);
    }
    if let Some(number) = job.build_number {
        put(BUILD_NUMBER.into(), &number.to_string());
    }
    if let Some(key) = &job.step_key {
        put(STEP_KEY.into(), key);
    }
    for (key, value) in job.tags() {
        let key = format!("{TAG_PREFIX}{key}");
        if key != format!("{TAG_PREFIX}queue") && is_qualified_name(&key) {
            put(key, value);
        }
    }
    labels
}

/// The annotations of a launch's Job and pod: where to find the job, and its priority.
pub fn annotations_for_launch(spec: &LaunchSpec) -> BTreeMap<String, String> {
    let env = &spec.job.env;
    let mut annotations = BTreeMap::new();
    if let Some(build_url) = env.get("BUILDKITE_BUILD_URL") {
        annotations.insert(BUILD_URL.to_string(), build_url.clone());
        annotations.insert(JOB_URL.to_string(), format!("{build_url}#{}", spec.job_id));
    }
    if let Some(branch) = spec
        .job
        .build_branch
        .as_ref()
        .or(env.get("BUILDKITE_BRANCH"))
    {
        annotations.insert(BUILD_BRANCH.to_string(), branch.clone());
    }
    annotations.insert(PRIORITY.to_string(), spec.job.priority.to_string());
    annotations
}

/// The launch a labelled object belongs to.
pub fn launch_of(labels: &BTreeMap<String, String>) -> Option<LaunchName> {
    labels.get(JOB_UUID)?.parse().ok().map(LaunchName::for_job)
}

/// `raw` as a label value: characters Kubernetes refuses become `_`, at most 63 characters,
/// starting and ending with a letter or digit. `None` when nothing is left.
pub fn label_value(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// Whether `value` is a label value Kubernetes accepts as it is.
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || label_value(value).as_deref() == Some(value)
}

/// Whether `key` is a label or annotation key: an optional DNS subdomain prefix and `/`, then
/// a name of at most 63 characters of letters, digits, `-`, `_` and `.`, starting and ending
/// with a letter or digit.
pub fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok =
        !name.is_empty() && name.len() <= 63 && label_value(name).as_deref() == Some(name);
    let prefix_ok = prefix.is_none_or(is_dns_subdomain);
    name_ok && prefix_ok
}

/// A DNS-1123 subdomain: lowercase labels joined by dots, at most 253 characters.
pub fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// A DNS-1123 label (a namespace or an object name of that kind): lowercase letters, digits
/// and `-`, starting and ending with a letter or digit, at most 63 characters.
pub fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use updraft_backends::JobContext;
    use uuid::Uuid;

    fn spec() -> LaunchSpec {
        let job_id = Uuid::new_v4();
        LaunchSpec {
            name: LaunchName::for_job(job_id),
            job_id,
            fleet: "linux-small".into(),
            job: JobContext {
                queue: "linux".into(),
                agent_query_rules: vec![
                    "queue=linux".into(),
                    "resource_class=large".into(),
                    "os=ubuntu 24.04".into(),
                    "bad key=x".into(),
                ],
                priority: 5,
                pipeline_slug: Some("my-app".into()),
                build_number: Some(42),
                build_branch: Some("main".into()),
                step_key: Some("tests:unit".into()),
                env: [(
                    "BUILDKITE_BUILD_URL".to_string(),
                    "https://buildkite.com/acme/my-app/builds/42".to_string(),
                )]
                .into(),
                command: None,
            },
            env: Default::default(),
            secrets: Default::default(),
            command: vec!["agent".into()],
            deadline: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_launch_is_labelled_for_cost_attribution() {
        let spec = spec();
        let labels = for_launch(&spec, "updraft");
        assert_eq!(labels[MANAGED_BY], "updraft");
        assert_eq!(labels[SCHEDULER], "updraft");
        assert_eq!(labels[FLEET], "linux-small");
        assert_eq!(labels[JOB_UUID], spec.job_id.to_string());
        assert_eq!(labels[QUEUE], "linux");
        assert_eq!(labels[PIPELINE], "my-app");
        assert_eq!(labels[BUILD_NUMBER], "42");
        assert_eq!(labels[STEP_KEY], "tests_unit");
        assert_eq!(labels["tag.buildkite.com/resource_class"], "large");
        assert_eq!(labels["tag.buildkite.com/os"], "ubuntu_24.04");
        assert!(
            !labels.contains_key("tag.buildkite.com/queue"),
            "the queue has its own label"
        );
        assert!(labels.keys().all(|k| is_qualified_name(k)), "{labels:?}");
        assert_eq!(launch_of(&labels), Some(spec.name.clone()));

        let annotations = annotations_for_launch(&spec);
        assert_eq!(
            annotations[JOB_URL],
            format!(
                "https://buildkite.com/acme/my-app/builds/42#{}",
                spec.job_id
            )
        );
        assert_eq!(annotations[PRIORITY], "5");
        assert_eq!(annotations[BUILD_BRANCH], "main");
    }

    #[test]
    fn label_values_are_made_valid() {
        assert_eq!(label_value("ok-value_1.2").as_deref(), Some("ok-value_1.2"));
        assert_eq!(
            label_value("-leading/and trailing-").as_deref(),
            Some("leading_and_trailing")
        );
        assert_eq!(label_value(&"x".repeat(80)).map(|v| v.len()), Some(63));
        assert_eq!(label_value("***"), None);
        assert!(is_label_value("") && is_label_value("a.b") && !is_label_value("a b"));
    }

    #[test]
    fn keys_and_names_follow_kubernetes_rules() {
        assert!(is_qualified_name("buildkite.com/job-uuid"));
        assert!(is_qualified_name("team"));
        assert!(!is_qualified_name("Bad.Prefix/x"));
        assert!(!is_qualified_name("a/"));
        assert!(is_dns_label("ci-jobs") && !is_dns_label("CI") && !is_dns_label("-a"));
    }
}
