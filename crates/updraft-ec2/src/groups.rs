//! A pool fleet's launch templates and Auto Scaling groups, one of each per capacity
//! (`<prefix>-<fleet>-spot`, `<prefix>-<fleet>-on-demand`). They are made on the fleet's first
//! add and kept up to date: a changed boot script or instance shape becomes a new launch
//! template version, which the group (launching `$Latest`) uses from then on.
//!
//! Every group protects its instances from scale-in from launch (`NewInstancesProtectedFrom
//! ScaleIn`) and never has its desired count lowered onto live instances: an instance leaves
//! only through the busy-safe protocol, by `TerminateInstanceInAutoScalingGroup` with the
//! decrement. Capacity Rebalance stays off, since the group would then replace spot
//! instances itself, busy or not; rebalance notices drain instead.

use crate::errors::{classify, is_not_found};
use crate::settings::{Ec2FleetSettings, Ec2Settings};
use crate::tags::cost_tags;
use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag as GroupTag};
use aws_sdk_ec2::types::{
    InstanceType, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMarketOptionsRequest, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceMetadataTagsState, LaunchTemplateTagSpecificationRequest, MarketType,
    RequestLaunchTemplateData, ResourceType, Tag,
};
use updraft_backends::BackendError;

/// How a group's instances are bought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capacity {
    Spot,
    OnDemand,
}

impl Capacity {
    pub fn as_str(self) -> &'static str {
        match self {
            Capacity::Spot => "spot",
            Capacity::OnDemand => "on-demand",
        }
    }

    /// The groups a fleet has: spot first when it buys spot.
    pub fn of(settings: &Ec2FleetSettings) -> &'static [Capacity] {
        if settings.spot {
            &[Capacity::Spot, Capacity::OnDemand]
        } else {
            &[Capacity::OnDemand]
        }
    }
}

/// The name of a fleet's launch template and group for `capacity`.
pub fn group_name(prefix: &str, fleet: &str, capacity: Capacity) -> String {
    format!("{prefix}-{fleet}-{}", capacity.as_str())
}

/// Everything the groups of one fleet are made from.
pub(crate) struct GroupSpec<'a> {
    pub settings: &'a Ec2Settings,
    pub fleet: &'a str,
    pub instance: &'a Ec2FleetSettings,
    /// The boot script, base64 as EC2 takes it.
    pub user_data: String,
    /// The most instances a group may hold (live ones plus those draining).
    pub max_size: i32,
}

impl GroupSpec<'_> {
    fn template_data(&self, capacity: Capacity) -> RequestLaunchTemplateData {
        let tags: Vec<Tag> = cost_tags(
            &self.settings.prefix,
            self.fleet,
            capacity.as_str(),
            &self.instance.tags,
        )
        .into_iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect();
        let tagged = |resource| {
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(resource)
                .set_tags(Some(tags.clone()))
                .build()
        };
        let mut data = RequestLaunchTemplateData::builder()
            .image_id(&self.instance.image_id)
            .instance_type(InstanceType::from(self.instance.instance_type.as_str()))
            .user_data(&self.user_data)
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .tag_specifications(tagged(ResourceType::Instance))
            .tag_specifications(tagged(ResourceType::Volume))
            .set_security_group_ids(
                (!self.instance.security_groups.is_empty())
                    .then(|| self.instance.security_groups.clone()),
            )
            .set_key_name(self.instance.key_name.clone());
        if let Some(profile) = &self.instance.instance_profile {
            let spec = LaunchTemplateIamInstanceProfileSpecificationRequest::builder();
            data = data.iam_instance_profile(if profile.starts_with("arn:") {
                spec.arn(profile).build()
            } else {
                spec.name(profile).build()
            });
        }
        if capacity == Capacity::Spot {
            data = data.instance_market_options(
                LaunchTemplateInstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .build(),
            );
        }
        data.build()
    }

    /// Make or update every launch template and group of the fleet.
    pub async fn ensure(
        &self,
        ec2: &aws_sdk_ec2::Client,
        autoscaling: &aws_sdk_autoscaling::Client,
    ) -> Result<(), BackendError> {
        for capacity in Capacity::of(self.instance) {
            let name = group_name(&self.settings.prefix, self.fleet, *capacity);
            self.ensure_template(ec2, &name, *capacity).await?;
            self.ensure_group(autoscaling, &name, *capacity).await?;
        }
        Ok(())
    }

    async fn ensure_template(
        &self,
        ec2: &aws_sdk_ec2::Client,
        name: &str,
        capacity: Capacity,
    ) -> Result<(), BackendError> {
        let data = self.template_data(capacity);
        let latest = ec2
            .describe_launch_template_versions()
            .launch_template_name(name)
            .versions("$Latest")
            .send()
            .await;
        match latest {
            Ok(found) => {
                let current = found
                    .launch_template_versions()
                    .first()
                    .and_then(|v| v.launch_template_data());
                let same = current.is_some_and(|c| {
                    c.user_data() == data.user_data()
                        && c.image_id() == data.image_id()
                        && c.instance_type() == data.instance_type()
                });
                if !same {
                    ec2.create_launch_template_version()
                        .launch_template_name(name)
                        .launch_template_data(data)
                        .send()
                        .await
                        .map_err(|e| classify("CreateLaunchTemplateVersion", &e))?;
                    tracing::info!(template = name, "launch template updated: a new version");
                }
                Ok(())
            }
            Err(error) if is_not_found(&error) => {
                ec2.create_launch_template()
                    .launch_template_name(name)
                    .launch_template_data(data)
                    .send()
                    .await
                    .map_err(|e| classify("CreateLaunchTemplate", &e))?;
                tracing::info!(template = name, "launch template created");
                Ok(())
            }
            Err(error) => Err(classify("DescribeLaunchTemplateVersions", &error)),
        }
    }

    async fn ensure_group(
        &self,
        autoscaling: &aws_sdk_autoscaling::Client,
        name: &str,
        capacity: Capacity,
    ) -> Result<(), BackendError> {
        let found = autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| classify("DescribeAutoScalingGroups", &e))?;
        if let Some(group) = found.auto_scaling_groups().first() {
            if group.max_size() != Some(self.max_size) {
                autoscaling
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .max_size(self.max_size)
                    .send()
                    .await
                    .map_err(|e| classify("UpdateAutoScalingGroup", &e))?;
            }
            return Ok(());
        }
        let tags: Vec<GroupTag> = cost_tags(
            &self.settings.prefix,
            self.fleet,
            capacity.as_str(),
            &self.instance.tags,
        )
        .into_iter()
        .map(|(key, value)| {
            GroupTag::builder()
                .key(key)
                .value(value)
                .propagate_at_launch(false)
                .resource_id(name)
                .resource_type("auto-scaling-group")
                .build()
        })
        .collect();
        autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_name(name)
                    .version("$Latest")
                    .build(),
            )
            .min_size(0)
            .max_size(self.max_size)
            .desired_capacity(0)
            .vpc_zone_identifier(self.instance.subnets.join(","))
            .new_instances_protected_from_scale_in(true)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| classify("CreateAutoScalingGroup", &e))?;
        tracing::info!(group = name, "auto scaling group created");
        Ok(())
    }
}
