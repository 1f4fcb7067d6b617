//! `updraft run`, `updraft check` and `updraft plan` (being built).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RunArgs {}
#[derive(clap::Args)]
pub struct CheckArgs {}
#[derive(clap::Args)]
pub struct PlanArgs {}

pub async fn run(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`updraft run` is not built yet")
}
pub async fn check(_args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`updraft check` is not built yet")
}
pub async fn plan(_args: PlanArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`updraft plan` is not built yet")
}
