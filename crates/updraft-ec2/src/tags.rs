//! The tags an EC2 pool puts on its instances, volumes and groups: for cost attribution
//! (`updraft:pool`, `updraft:fleet`, `updraft:capacity` and the fleet's own), and the three
//! that carry the scale-in protocol and notices between the scheduler and an instance.

use std::collections::BTreeMap;

/// Set by the scheduler to drain an instance; its boot script sees it in instance metadata.
pub const DRAIN_TAG: &str = "updraft:drain";
/// Set by an instance's boot script once every agent on it has exited.
pub const EXITED_TAG: &str = "updraft:agents";
pub const EXITED_VALUE: &str = "exited";
/// Set by the scheduler when an interruption or rebalance notice names the instance, so the
/// notice survives a restart of the scheduler.
pub const NOTICE_TAG: &str = "updraft:notice";
pub const POOL_TAG: &str = "updraft:pool";
pub const FLEET_TAG: &str = "updraft:fleet";
pub const CAPACITY_TAG: &str = "updraft:capacity";

/// Every tag a fleet's instances and volumes carry for cost attribution.
pub fn cost_tags(
    prefix: &str,
    fleet: &str,
    capacity: &str,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut tags = extra.clone();
    tags.insert(POOL_TAG.into(), prefix.into());
    tags.insert(FLEET_TAG.into(), fleet.into());
    tags.insert(CAPACITY_TAG.into(), capacity.into());
    tags
}
