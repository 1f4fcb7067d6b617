//! Reading the backend's part of a config file: the `[kubernetes]` table and the
//! `[fleet.kubernetes]` table of every fleet whose backend is `kubernetes`, into the same list
//! of problems as the rest of the file, with the checks that span both (a fleet tag naming a
//! resource class the fleet does not define, a class no job can reach).

use crate::fleet_settings::{names, FleetSettings, FleetTemplate};
use crate::resources::RESOURCE_CLASS_TAG;
use crate::settings::{check_scheduler_id, KubernetesSettings};
use serde_json::Value;
use std::collections::BTreeMap;
use updraft_config::{read, Errors, Path};

/// A fleet of the `kubernetes` backend as the file has it.
#[derive(Debug, Clone)]
pub struct FleetTable {
    /// Where the fleet is in the file (`fleet[1]`).
    pub at: Path,
    pub name: String,
    /// Its `[fleet.kubernetes]` table (empty when the file has none).
    pub table: Value,
    /// Its `tags` (`"resource_class=large"`).
    pub tags: Vec<String>,
}

/// The backend's settings, read and checked.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    pub settings: KubernetesSettings,
    /// The value of the `updraft.dev/scheduler` label of this scheduler's objects.
    pub scheduler_id: String,
    /// Each kubernetes fleet's template, by fleet name.
    pub fleets: BTreeMap<String, FleetTemplate>,
}

impl KubernetesConfig {
    /// Every namespace some fleet launches into, in order.
    pub fn namespaces(&self) -> Vec<String> {
        let mut namespaces: Vec<String> =
            self.fleets.values().map(|f| f.namespace.clone()).collect();
        namespaces.sort();
        namespaces.dedup();
        namespaces
    }
}

/// Read `[kubernetes]` (`section`, an empty table when absent) and every kubernetes fleet's
/// table, adding each problem to `errors`. `stack_key` is `[buildkite] stack_key`, the default
/// scheduler id. `None` when the section cannot be read at all.
pub fn read_config(
    section: &Value,
    fleets: &[FleetTable],
    stack_key: &str,
    errors: &mut Errors,
) -> Option<KubernetesConfig> {
    let at = Path::root().key("kubernetes");
    let settings = read::<KubernetesSettings>(section, &at, errors);
    let namespace = settings
        .as_ref()
        .map_or("default", |s| s.namespace.as_str())
        .to_string();
    let mut templates = BTreeMap::new();
    for fleet in fleets {
        let table_at = fleet.at.key("kubernetes");
        let Some(fleet_settings) = read::<FleetSettings>(&fleet.table, &table_at, errors) else {
            continue;
        };
        let template = fleet_settings.resolve(&fleet.name, &namespace, &table_at, errors);
        check_resource_class_tags(fleet, &template, errors);
        templates.insert(fleet.name.clone(), template);
    }
    let settings = settings?;
    let scheduler_id = settings.scheduler_id_or(stack_key);
    if settings.scheduler_id.is_none() {
        check_scheduler_id(
            &scheduler_id,
            &Path::root().key("buildkite").key("stack_key"),
            errors,
        );
    }
    Some(KubernetesConfig {
        settings,
        scheduler_id,
        fleets: templates,
    })
}

/// A fleet serves a job only when its tags match the job's rules, `resource_class` included:
/// each class a tag names must be defined, and each class defined must be reachable (named
/// by a tag, or the default).
fn check_resource_class_tags(fleet: &FleetTable, template: &FleetTemplate, errors: &mut Errors) {
    let mut tagged = Vec::new();
    for (i, tag) in fleet.tags.iter().enumerate() {
        let Some((key, class)) = tag.split_once('=') else {
            continue;
        };
        if key.trim() != RESOURCE_CLASS_TAG {
            continue;
        }
        tagged.push(class.to_string());
        if !template.resource_classes.contains_key(class) {
            errors.push(
                &fleet.at.key("tags").index(i),
                format!(
                    "resource class {class:?} is not defined in [fleet.kubernetes.resource_classes] (defined: {})",
                    names(&template.resource_classes)
                ),
            );
        }
    }
    for class in template.resource_classes.keys() {
        let reachable =
            tagged.contains(class) || template.default_resource_class.as_ref() == Some(class);
        if !reachable {
            errors.push(
                &fleet.at.key("kubernetes").key("resource_classes").key(class),
                format!(
                    "no job can ask for it: add \"{RESOURCE_CLASS_TAG}={class}\" to {} (or make it the default_resource_class)",
                    fleet.at.key("tags")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fleet(index: usize, table: Value, tags: &[&str]) -> FleetTable {
        FleetTable {
            at: Path::root().key("fleet").index(index),
            name: format!("fleet{index}"),
            table,
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn fleets_inherit_the_namespace_and_the_scheduler_id_comes_from_the_stack_key() {
        let mut errors = Errors::new();
        let config = read_config(
            &json!({"namespace": "ci"}),
            &[
                fleet(0, json!({"image": "agent:1"}), &[]),
                fleet(1, json!({"image": "agent:1", "namespace": "gpu"}), &[]),
            ],
            "updraft-prod",
            &mut errors,
        )
        .expect("config");
        assert!(errors.is_empty(), "{:?}", errors.into_vec());
        assert_eq!(config.scheduler_id, "updraft-prod");
        assert_eq!(config.fleets["fleet0"].namespace, "ci");
        assert_eq!(config.namespaces(), ["ci", "gpu"]);
    }

    #[test]
    fn resource_classes_must_match_the_fleets_tags() {
        let mut errors = Errors::new();
        read_config(
            &json!({}),
            &[fleet(
                2,
                json!({"image": "agent:1", "resource_classes": {"small": {}, "large": {}, "gpu": {}}, "default_resource_class": "small"}),
                &["os=linux", "resource_class=large", "resource_class=huge"],
            )],
            "updraft",
            &mut errors,
        );
        let errors: Vec<String> = errors.into_vec().iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "fleet[2].tags[2]: resource class \"huge\" is not defined in [fleet.kubernetes.resource_classes] (defined: gpu, large, small)",
                "fleet[2].kubernetes.resource_classes.gpu: no job can ask for it: add \"resource_class=gpu\" to fleet[2].tags (or make it the default_resource_class)",
            ]
        );
    }

    #[test]
    fn a_stack_key_that_is_no_label_value_needs_a_scheduler_id() {
        let mut errors = Errors::new();
        read_config(&json!({}), &[], "my stack", &mut errors);
        let errors: Vec<String> = errors.into_vec().iter().map(ToString::to_string).collect();
        assert!(
            errors[0].starts_with("buildkite.stack_key: expected a label value"),
            "{errors:?}"
        );
    }
}
