//! Image references as the kubelet and containerd read them: parsing and normalising
//! (`busybox` → `docker.io/library/busybox:latest`), the bad-image rule, and the messages a
//! failed pull produces. No image is ever fetched.

use crate::options::BadImageRule;
use sha2::{Digest, Sha256};

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference, or gives the message the kubelet reports as `InvalidImageName`.
    pub fn parse(reference: &str) -> Result<ImageRef, String> {
        let invalid = || {
            format!(
                "Failed to apply default image tag \"{reference}\": couldn't parse image name \
                 \"{reference}\": invalid reference format"
            )
        };
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (reference, None),
        };
        if let Some(digest) = digest {
            let (algorithm, hex) = digest.split_once(':').ok_or_else(invalid)?;
            let well_formed = !algorithm.is_empty()
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit());
            if !well_formed {
                return Err(invalid());
            }
        }
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(tag) = tag {
            let well_formed = !tag.is_empty()
                && tag.len() <= 128
                && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !well_formed {
                return Err(invalid());
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ if name.contains('/') => ("docker.io".to_string(), name.to_string()),
            _ => ("docker.io".to_string(), format!("library/{name}")),
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
                && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
                && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        };
        if domain.is_empty() || !path.split('/').all(component_ok) {
            return Err(invalid());
        }
        Ok(ImageRef {
            domain,
            path,
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// The fully qualified reference containerd reports (`docker.io/library/x:latest`).
    pub fn normalized(&self) -> String {
        let mut text = format!("{}/{}", self.domain, self.path);
        match (&self.tag, &self.digest) {
            (Some(tag), _) => text.push_str(&format!(":{tag}")),
            (None, None) => text.push_str(":latest"),
            (None, Some(_)) => {}
        }
        if let Some(digest) = &self.digest {
            text.push_str(&format!("@{digest}"));
        }
        text
    }

    /// The `imageID` of a pulled image: the repository at a (made-up, stable) digest.
    pub fn image_id(&self) -> String {
        let digest = self.digest.clone().unwrap_or_else(|| {
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(self.normalized().as_bytes()))
            )
        });
        format!("{}/{}@{digest}", self.domain, self.path)
    }

    /// Why pulling fails under `rule`, worded as containerd words it; `None` when it pulls.
    pub fn pull_failure(&self, reference: &str, rule: &BadImageRule) -> Option<String> {
        let normalized = self.normalized();
        let unknown_host = rule
            .registry_suffixes
            .iter()
            .any(|suffix| self.domain.ends_with(suffix.as_str()));
        let prefix = format!(
            "rpc error: code = Unknown desc = failed to pull and unpack image \"{normalized}\": \
             failed to resolve reference \"{normalized}\""
        );
        if unknown_host {
            let tag = self.tag.as_deref().unwrap_or("latest");
            return Some(format!(
                "{prefix}: failed to do request: Head \"https://{domain}/v2/{path}/manifests/{tag}\": \
                 dial tcp: lookup {domain}: no such host",
                domain = self.domain,
                path = self.path,
            ));
        }
        rule.substrings
            .iter()
            .any(|s| reference.contains(s.as_str()))
            .then(|| {
                format!(
                    "{prefix}: pull access denied, repository does not exist or may require \
                     authorization: server message: insufficient_scope: authorization failed"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_containerd() {
        let n = |r: &str| ImageRef::parse(r).map(|i| i.normalized());
        assert_eq!(n("busybox").unwrap(), "docker.io/library/busybox:latest");
        assert_eq!(
            n("buildkite/agent:3").unwrap(),
            "docker.io/buildkite/agent:3"
        );
        assert_eq!(n("localhost:5000/x/y:v1").unwrap(), "localhost:5000/x/y:v1");
        assert_eq!(
            n("ghcr.io/o/r@sha256:0123456789abcdef0123456789abcdef").unwrap(),
            "ghcr.io/o/r@sha256:0123456789abcdef0123456789abcdef"
        );
        for bad in ["Busybox", "a b", "x:", "x::y", "/x", "x@sha256:zz"] {
            assert!(
                n(bad).unwrap_err().contains("invalid reference format"),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_image_rule_matches_substrings_and_hosts() {
        let rule = BadImageRule::default();
        let fails = |r: &str| ImageRef::parse(r).unwrap().pull_failure(r, &rule);
        assert!(fails("busybox:1.36").is_none());
        assert!(fails("does-not-exist:1")
            .unwrap()
            .contains("pull access denied"));
        assert!(fails("registry.invalid/a/b:2")
            .unwrap()
            .contains("lookup registry.invalid: no such host"));
    }
}
