//! `updraft bench pickup` and `updraft bench burst` (being built).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct PickupArgs {
    #[command(flatten)]
    pub common: super::Common,
}
#[derive(clap::Args)]
pub struct BurstArgs {
    #[command(flatten)]
    pub common: super::Common,
}

pub async fn pickup(_args: PickupArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`updraft bench pickup` is not built yet")
}
pub async fn burst(_args: BurstArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`updraft bench burst` is not built yet")
}
