//! The Elastic CI Stack's S3 secrets for `updraft agent`, as its s3secrets-helper reads
//! them, at the bucket root and then under the prefix (`BUILDKITE_PLUGIN_S3_SECRETS_BUCKET_PREFIX`,
//! else the pipeline slug), later ones winning:
//!
//! - `env`, `environment`: `KEY=value` lines (optionally `export`ed and quoted) added to the
//!   job's environment. Unlike the stack's hook they are parsed, never run by a shell.
//! - `private_ssh_key`, `id_rsa_github`: written to the job's private directory and used by
//!   git through `GIT_SSH_COMMAND` (the stack adds them to an ssh-agent).
//! - `git-credentials`: written to the private directory and given to git as a `store`
//!   credential helper through `GIT_CONFIG_PARAMETERS`.
//! - `secret-files/<NAME>`: each file whose name ends in `_SECRET`, `_SECRET_KEY`,
//!   `_PASSWORD`, `_TOKEN` or `_ACCESS_KEY` becomes the variable `NAME`.
//!
//! An object not encrypted with KMS (`aws:kms`, `aws:kms:dsse`) is refused, naming the key
//! and how it is encrypted, unless allowed; a missing bucket fails the job. Values are never
//! logged or put in an error.

use crate::errors::classify;
use aws_sdk_s3::types::ServerSideEncryption;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::Path;
use updraft_agent::{EnvironmentProvider, JobEnvironment, Provided};

/// Secret file names that become variables (the stack's list).
const SECRET_FILE_SUFFIXES: [&str; 5] = [
    "_SECRET",
    "_SECRET_KEY",
    "_PASSWORD",
    "_TOKEN",
    "_ACCESS_KEY",
];
const SSH_KEYS: [&str; 2] = ["private_ssh_key", "id_rsa_github"];
const ENV_FILES: [&str; 2] = ["env", "environment"];

/// Where the secrets are and how strict to be.
#[derive(Clone)]
pub struct S3Secrets {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// The key prefix; by default the job's pipeline slug.
    prefix: Option<String>,
    allow_unencrypted: bool,
}

impl std::fmt::Debug for S3Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Secrets")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("allow_unencrypted", &self.allow_unencrypted)
            .finish()
    }
}

/// What was found, before it is turned into variables and files.
#[derive(Default)]
struct Found {
    env: BTreeMap<String, String>,
    ssh_keys: Vec<Vec<u8>>,
    git_credentials: Option<Vec<u8>>,
}

impl S3Secrets {
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: &str,
        prefix: Option<String>,
        allow_unencrypted: bool,
    ) -> S3Secrets {
        S3Secrets {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.filter(|p| !p.trim().is_empty()),
            allow_unencrypted,
        }
    }

    /// One object, or `None` if it does not exist (or may not be read, as the stack skips it).
    async fn object(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let answer = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(answer) => answer,
            Err(error) => {
                let error = classify("GetObject", &error);
                if error.is_not_found() {
                    return Ok(None);
                }
                if error.code.as_deref() == Some("AccessDenied") {
                    tracing::warn!(bucket = %self.bucket, key, "no permission to read a secrets object; skipping it");
                    return Ok(None);
                }
                return Err(format!("s3://{}/{key}: {error}", self.bucket));
            }
        };
        let encryption = answer.server_side_encryption().cloned();
        let kms = matches!(
            encryption,
            Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
        );
        if !kms && !self.allow_unencrypted {
            let how = encryption
                .map(|e| e.as_str().to_string())
                .unwrap_or_else(|| "none".into());
            return Err(format!(
                "s3://{}/{key} is not encrypted with KMS (server-side encryption: {how}); upload it with `--sse aws:kms`, or allow unencrypted secrets (--secrets-allow-unencrypted)",
                self.bucket
            ));
        }
        let body = answer
            .body
            .collect()
            .await
            .map_err(|e| format!("s3://{}/{key}: reading it failed: {e}", self.bucket))?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    /// The keys under `<base>secret-files/`; fails if the bucket does not exist.
    async fn secret_files(&self, base: &str) -> Result<Vec<String>, String> {
        let prefix = format!("{base}secret-files/");
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|error| {
                    let error = classify("ListObjectsV2", &error);
                    if error.code.as_deref() == Some("NoSuchBucket") {
                        format!("S3 bucket {:?} not found", self.bucket)
                    } else {
                        format!("listing s3://{}/{prefix}: {error}", self.bucket)
                    }
                })?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Everything for a job of pipeline `slug`.
    async fn fetch(&self, slug: Option<&str>) -> Result<Found, String> {
        let prefix = self
            .prefix
            .as_deref()
            .or(slug)
            .map(|p| format!("{}/", p.trim_matches('/')));
        let mut bases = vec![String::new()];
        bases.extend(prefix);
        let mut found = Found::default();
        for base in &bases {
            for name in SSH_KEYS {
                if let Some(key) = self.object(&format!("{base}{name}")).await? {
                    found.ssh_keys.push(key);
                }
            }
            for name in ENV_FILES {
                if let Some(text) = self.object(&format!("{base}{name}")).await? {
                    let text = String::from_utf8_lossy(&text);
                    found.env.extend(parse_env(&text).map_err(|line| {
                        format!(
                            "s3://{}/{base}{name}: line {line} is not KEY=value",
                            self.bucket
                        )
                    })?);
                }
            }
            if let Some(credentials) = self.object(&format!("{base}git-credentials")).await? {
                found.git_credentials = Some(credentials);
            }
            for key in self.secret_files(base).await? {
                let name = key.rsplit('/').next().unwrap_or_default();
                if !SECRET_FILE_SUFFIXES.iter().any(|s| name.ends_with(s))
                    || !is_variable_name(name)
                {
                    continue;
                }
                if let Some(value) = self.object(&key).await? {
                    found.env.insert(
                        name.to_string(),
                        String::from_utf8_lossy(&value).into_owned(),
                    );
                }
            }
        }
        Ok(found)
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `KEY=value` lines: blank lines and `#` comments are skipped, `export ` is allowed, a value
/// in single quotes is literal, one in double quotes loses its quotes and `\"`/`\\` escapes.
/// The error is the 1-based number of the first line that is none of these.
fn parse_env(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (key, value) = line.split_once('=').ok_or(index + 1)?;
        if !is_variable_name(key) {
            return Err(index + 1);
        }
        let value = if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\''))
        {
            inner.to_string()
        } else if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            inner.replace("\\\"", "\"").replace("\\\\", "\\")
        } else {
            value.to_string()
        };
        pairs.push((key.to_string(), value));
    }
    Ok(pairs)
}

/// Write `content` to `path`, readable only by this user.
fn write_private(path: &Path, content: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(content)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A path as one single-quoted shell word (for `GIT_SSH_COMMAND`, which git runs with sh).
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

impl EnvironmentProvider for S3Secrets {
    fn provide<'a>(&'a self, job: JobEnvironment<'a>) -> BoxFuture<'a, Result<Provided, String>> {
        Box::pin(async move {
            let slug = job.env.get("BUILDKITE_PIPELINE_SLUG").map(String::as_str);
            let found = self.fetch(slug).await?;
            let mut env = found.env;
            if !found.ssh_keys.is_empty() {
                let mut command = String::from("ssh -o IdentitiesOnly=yes");
                for (i, key) in found.ssh_keys.iter().enumerate() {
                    let path = job.private_dir.join(format!("ssh-key-{i}"));
                    let mut key = key.clone();
                    // ssh refuses a key file whose last line has no newline.
                    if !key.ends_with(b"\n") {
                        key.push(b'\n');
                    }
                    write_private(&path, &key)?;
                    command.push_str(&format!(" -i {}", quoted(&path)));
                }
                env.insert("GIT_SSH_COMMAND".into(), command);
            }
            if let Some(credentials) = &found.git_credentials {
                let path = job.private_dir.join("git-credentials");
                write_private(&path, credentials)?;
                let helper = format!("'credential.helper=store --file={}'", path.display());
                let parameters = match job
                    .env
                    .get("GIT_CONFIG_PARAMETERS")
                    .filter(|p| !p.is_empty())
                {
                    Some(existing) => format!("{existing} {helper}"),
                    None => helper,
                };
                env.insert("GIT_CONFIG_PARAMETERS".into(), parameters);
            }
            tracing::info!(
                bucket = %self.bucket,
                variables = env.len(),
                ssh_keys = found.ssh_keys.len(),
                git_credentials = found.git_credentials.is_some(),
                "secrets from S3 added to the job"
            );
            Ok(Provided { env })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_files_are_parsed_not_run() {
        let pairs = parse_env(
            "# comment\n\nexport A=1\nB='two words $HOME'\nC=\"say \\\"hi\\\"\"\nD=$(rm -rf /)\n",
        )
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".into(), "two words $HOME".into()),
                ("C".into(), "say \"hi\"".into()),
                ("D".into(), "$(rm -rf /)".into()),
            ]
        );
        assert_eq!(parse_env("A=1\nnot a pair\n"), Err(2));
        assert_eq!(parse_env("1A=x\n"), Err(1));
    }
}
