//! A hook for adding to a job's environment before its hooks and checkout run, from outside
//! this crate (e.g. secrets fetched from a cloud store, which this crate knows nothing of).
//! The provider may write files (SSH keys, credential stores) into a private directory the
//! runner makes for the job and removes, with everything in it, when the job ends.
//!
//! Values a provider adds are secrets as far as the agent is concerned: the agent never logs
//! them, and a provider's error text must not contain them either (it goes to the job log).

use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a provider is told of the job.
#[derive(Debug, Clone, Copy)]
pub struct JobEnvironment<'a> {
    pub job_id: &'a str,
    /// The job's environment as it stands (Buildkite's variables and the agent's).
    pub env: &'a BTreeMap<String, String>,
    /// A directory only this process can read, removed when the job ends.
    pub private_dir: &'a Path,
}

/// What a provider adds.
#[derive(Debug, Clone, Default)]
pub struct Provided {
    /// Variables added to (and replacing in) the job's environment.
    pub env: BTreeMap<String, String>,
}

/// Adds variables to each job's environment. `Debug` must show no secret.
pub trait EnvironmentProvider: Send + Sync + std::fmt::Debug {
    /// The variables for `job`; an error fails the job before anything of it runs, with the
    /// error text in the job log.
    fn provide<'a>(&'a self, job: JobEnvironment<'a>) -> BoxFuture<'a, Result<Provided, String>>;
}

/// The private directory for a job's provided files, next to its build directory.
pub(crate) fn private_dir_for(job_dir: &Path) -> PathBuf {
    job_dir.with_extension("private")
}

/// Make the private directory (0700, empty).
pub(crate) fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
