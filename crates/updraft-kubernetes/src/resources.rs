//! Compute resources: Kubernetes quantities, a fleet's default requests and limits, and
//! resource classes — named sizes a job picks with its `resource_class` agent tag, each
//! giving the agent container requests and limits and the pod a node selector and
//! tolerations (small/large, spot/on-demand, GPU nodes).

use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use updraft_config::{Errors, Path};

/// The agent tag a job names its resource class with.
pub const RESOURCE_CLASS_TAG: &str = "resource_class";

/// Requests and limits, by resource name (`cpu`, `memory`, `ephemeral-storage`,
/// `nvidia.com/gpu`), as Kubernetes quantities (`"500m"`, `"2Gi"`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSettings {
    /// What the agent container is guaranteed (`{ cpu = "1", memory = "2Gi" }`).
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// The most the agent container may use.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// One resource class: a size a job asks for with `agents: { resource_class: <name> }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceClassSettings {
    /// The agent container's requests (these replace the fleet's `resources` key by key).
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// The agent container's limits.
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
    /// Node labels the pod must land on (`{ "karpenter.sh/capacity-type" = "spot" }`).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pod tolerates, as in a pod spec
    /// (`[{ key = "gpu", operator = "Exists", effect = "NoSchedule" }]`).
    #[serde(default)]
    #[schemars(with = "Vec<BTreeMap<String, Value>>")]
    pub tolerations: Vec<Value>,
}

/// A resource class ready to apply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceClass {
    pub resources: ResourceRequirements,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

impl ResourceClass {
    /// Merge the class into `pod`: its requests and limits over the agent container's (key by
    /// key), its node selector over the pod's, its tolerations after the pod's.
    pub fn apply(&self, pod: &mut PodSpec, agent: usize) {
        if let Some(container) = pod.containers.get_mut(agent) {
            merge_resources(
                container.resources.get_or_insert_with(Default::default),
                &self.resources,
            );
        }
        if !self.node_selector.is_empty() {
            let selector = pod.node_selector.get_or_insert_with(Default::default);
            selector.extend(self.node_selector.clone());
        }
        if !self.tolerations.is_empty() {
            pod.tolerations
                .get_or_insert_with(Vec::new)
                .extend(self.tolerations.clone());
        }
    }
}

/// `extra`'s requests and limits over `into`'s, key by key.
pub fn merge_resources(into: &mut ResourceRequirements, extra: &ResourceRequirements) {
    for (mine, theirs) in [
        (&mut into.requests, &extra.requests),
        (&mut into.limits, &extra.limits),
    ] {
        if let Some(theirs) = theirs.as_ref().filter(|t| !t.is_empty()) {
            mine.get_or_insert_with(Default::default)
                .extend(theirs.clone());
        }
    }
}

impl ResourcesSettings {
    /// The requirements, with every bad quantity reported under `at`.
    pub fn resolve(&self, at: &Path, errors: &mut Errors) -> ResourceRequirements {
        requirements(&self.requests, &self.limits, at, errors)
    }
}

impl ResourceClassSettings {
    /// The class, with every problem reported under `at`.
    pub fn resolve(&self, at: &Path, errors: &mut Errors) -> ResourceClass {
        let resources = requirements(&self.requests, &self.limits, at, errors);
        for key in self.node_selector.keys() {
            if !crate::labels::is_qualified_name(key) {
                errors.push(
                    &at.key("node_selector").key(key),
                    "expected a label key like \"kubernetes.io/arch\"",
                );
            }
        }
        let tolerations = self
            .tolerations
            .iter()
            .enumerate()
            .filter_map(|(i, raw)| match crate::strict::read::<Toleration>(raw) {
                Ok(toleration) => Some(toleration),
                Err(problems) => {
                    let here = at.key("tolerations").index(i);
                    for problem in problems {
                        errors.push(
                            &Path::verbatim(&crate::strict::join(here.as_str(), &problem.path)),
                            problem.message,
                        );
                    }
                    None
                }
            })
            .collect();
        ResourceClass {
            resources,
            node_selector: self.node_selector.clone(),
            tolerations,
        }
    }
}

fn requirements(
    requests: &BTreeMap<String, String>,
    limits: &BTreeMap<String, String>,
    at: &Path,
    errors: &mut Errors,
) -> ResourceRequirements {
    let mut quantities = |map: &BTreeMap<String, String>, key: &str| {
        let mut out = BTreeMap::new();
        for (name, value) in map {
            if is_quantity(value) {
                out.insert(name.clone(), Quantity(value.clone()));
            } else {
                errors.push(
                    &at.key(key).key(name),
                    format!("expected a Kubernetes quantity like \"500m\", \"2\" or \"4Gi\", got {value:?}"),
                );
            }
        }
        (!out.is_empty()).then_some(out)
    };
    let requests = quantities(requests, "requests");
    let limits = quantities(limits, "limits");
    ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    }
}

/// Whether `text` is a Kubernetes quantity: a decimal number with an optional binary
/// (`Ki`…`Ei`), decimal (`n`, `u`, `m`, `k`, `M`…`E`) or exponent (`e3`) suffix.
pub fn is_quantity(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let number_ok = digits > 0 && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| exp.strip_prefix(['+', '-']).unwrap_or(exp))
        .is_some_and(|exp| !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;
    use serde_json::json;

    #[test]
    fn quantities_are_recognised() {
        for good in [
            "1",
            "500m",
            "2Gi",
            "0.5",
            "1e3",
            "1.5E-2",
            "+4k",
            "128974848",
        ] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "1.2.3", "5 Gi", "Gi", "1GB", "1e", "lots"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn a_class_resolves_and_names_each_mistake() {
        let settings: ResourceClassSettings = serde_json::from_value(json!({
            "requests": {"cpu": "2", "memory": "lots"},
            "node_selector": {"Bad Key": "x"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}, {"key": "x", "effects": "NoSchedule"}],
        }))
        .unwrap();
        let mut errors = Errors::new();
        let class = settings.resolve(
            &Path::verbatim("fleet[0].kubernetes.resource_classes.large"),
            &mut errors,
        );
        let errors: Vec<String> = errors.into_vec().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "fleet[0].kubernetes.resource_classes.large.requests.memory: expected a Kubernetes quantity like \"500m\", \"2\" or \"4Gi\", got \"lots\"",
                "fleet[0].kubernetes.resource_classes.large.node_selector.Bad Key: expected a label key like \"kubernetes.io/arch\"",
                "fleet[0].kubernetes.resource_classes.large.tolerations[1].effects: unknown field",
            ]
        );
        assert_eq!(class.tolerations.len(), 1);
        assert_eq!(
            class.resources.requests.unwrap()["cpu"],
            Quantity("2".into())
        );
    }

    #[test]
    fn applying_a_class_merges_into_the_agent_container_and_the_pod() {
        let mut pod = PodSpec {
            containers: vec![Container {
                name: "agent".into(),
                resources: Some(ResourceRequirements {
                    requests: Some(
                        [
                            ("cpu".to_string(), Quantity("1".into())),
                            ("memory".to_string(), Quantity("1Gi".into())),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            node_selector: Some([("os".to_string(), "linux".to_string())].into()),
            ..Default::default()
        };
        let class = ResourceClass {
            resources: ResourceRequirements {
                requests: Some([("cpu".to_string(), Quantity("4".into()))].into()),
                limits: Some([("memory".to_string(), Quantity("8Gi".into()))].into()),
                ..Default::default()
            },
            node_selector: [("pool".to_string(), "large".to_string())].into(),
            tolerations: vec![Toleration {
                key: Some("large".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }],
        };
        class.apply(&mut pod, 0);
        let resources = pod.containers[0].resources.clone().unwrap();
        assert_eq!(resources.requests.unwrap()["cpu"], Quantity("4".into()));
        assert_eq!(resources.limits.unwrap()["memory"], Quantity("8Gi".into()));
        assert_eq!(pod.node_selector.unwrap().len(), 2);
        assert_eq!(pod.tolerations.unwrap().len(), 1);
    }
}
