//! The name, label and annotation rules of Kubernetes' apimachinery validation, with its
//! messages, so an object the real server would reject is rejected here the same way.

const DNS1123_LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case \
    alphanumeric characters or '-', and must start and end with an alphanumeric character \
    (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

const DNS1123_SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower \
    case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric \
    character (e.g. 'example.com', regex used for validation is \
    '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

const QUALIFIED_NAME_MESSAGE: &str = "name part must consist of alphanumeric characters, '-', \
    '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or \
    'my.name',  or '123-abc', regex used for validation is \
    '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

const LABEL_VALUE_MESSAGE: &str = "a valid label must be an empty string or consist of \
    alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric \
    character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is \
    '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

const CONFIG_KEY_MESSAGE: &str = "a valid config key must consist of alphanumeric characters, \
    '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for \
    validation is '[-._a-zA-Z0-9]+')";

const ENV_VAR_NAME_MESSAGE: &str = "a valid environment variable name must consist only of \
    printable ASCII characters other than '='";

/// The most bytes all annotations of one object may take together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// The longest label value, and the longest name part of a label key.
pub const MAX_LABEL_LENGTH: usize = 63;

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Problems with a DNS-1123 label (container names, namespace names).
pub fn dns1123_label_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if text.len() > 63 {
        problems.push(too_long(63));
    }
    let well_formed = !text.is_empty()
        && text.chars().all(|c| is_lower_alnum(c) || c == '-')
        && text.starts_with(is_lower_alnum)
        && text.ends_with(is_lower_alnum);
    if !well_formed {
        problems.push(DNS1123_LABEL_MESSAGE.into());
    }
    problems
}

/// Problems with a DNS-1123 subdomain (most object names).
pub fn dns1123_subdomain_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if text.len() > 253 {
        problems.push(too_long(253));
    }
    let well_formed = !text.is_empty()
        && text.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| is_lower_alnum(c) || c == '-')
                && part.starts_with(is_lower_alnum)
                && part.ends_with(is_lower_alnum)
        });
    if !well_formed {
        problems.push(DNS1123_SUBDOMAIN_MESSAGE.into());
    }
    problems
}

fn is_qualified_name_part(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Problems with a label or annotation key: `[prefix/]name`.
pub fn label_key_problems(key: &str) -> Vec<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let mut problems = Vec::new();
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            problems.push("prefix part must be non-empty".to_string());
        } else {
            problems.extend(
                dns1123_subdomain_problems(prefix)
                    .into_iter()
                    .map(|p| format!("prefix part {p}")),
            );
        }
    }
    if name.is_empty() {
        problems.push("name part must be non-empty".into());
    } else {
        if name.len() > MAX_LABEL_LENGTH {
            problems.push(format!("name part {}", too_long(MAX_LABEL_LENGTH)));
        }
        if !is_qualified_name_part(name) {
            problems.push(QUALIFIED_NAME_MESSAGE.into());
        }
    }
    problems
}

/// Problems with a label value.
pub fn label_value_problems(value: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if value.len() > MAX_LABEL_LENGTH {
        problems.push(too_long(MAX_LABEL_LENGTH));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        problems.push(LABEL_VALUE_MESSAGE.into());
    }
    problems
}

/// Problems with a Secret or ConfigMap data key.
pub fn config_key_problems(key: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if key.len() > 253 {
        problems.push(too_long(253));
    }
    let well_formed = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if !well_formed {
        problems.push(CONFIG_KEY_MESSAGE.into());
    }
    if key == "." || key == ".." {
        problems.push(format!("must not be '{key}'"));
    }
    problems
}

/// Problems with an environment variable name (relaxed rules, Kubernetes 1.32+).
pub fn env_var_name_problems(name: &str) -> Vec<String> {
    let well_formed = !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && c != '=');
    if well_formed {
        vec![]
    } else {
        vec![ENV_VAR_NAME_MESSAGE.into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_1123() {
        assert!(dns1123_subdomain_problems("my-job.v1").is_empty());
        assert!(!dns1123_subdomain_problems("My_Job").is_empty());
        assert!(!dns1123_subdomain_problems("-a").is_empty());
        assert!(!dns1123_subdomain_problems(&"a".repeat(254)).is_empty());
        assert!(dns1123_label_problems("main").is_empty());
        assert!(!dns1123_label_problems("a.b").is_empty());
    }

    #[test]
    fn labels_follow_qualified_name_rules() {
        assert!(label_key_problems("app.kubernetes.io/name").is_empty());
        assert!(!label_key_problems("Bad Prefix/x").is_empty());
        assert!(!label_key_problems("a/").is_empty());
        assert!(label_value_problems("").is_empty());
        assert!(label_value_problems("My.value_1").is_empty());
        assert!(!label_value_problems("-x").is_empty());
        assert!(!label_value_problems(&"v".repeat(64)).is_empty());
    }
}
