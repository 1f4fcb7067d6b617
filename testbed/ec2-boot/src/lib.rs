//! Test bed only: the operating system of the EC2 instances moto launches. moto's Auto
//! Scaling creates a group's instances (running, InService) but runs nothing on them
//! (`shared/reference/aws.md` §6). [`Ec2Boot`] watches the groups and boots each InService
//! instance: it runs the instance's user data as a local process group, with instance
//! metadata (IMDSv2, instance tags included) served for that instance and an `aws` command
//! on `PATH` that reaches moto; when the instance is terminated it kills whatever the script
//! started, recording whether any agent was still alive. It also plays AWS's spot market:
//! while spot capacity is failing, a new instance of a spot group is taken back at once
//! (terminated with the decrement, as if it never launched), and [`Ec2Boot::interrupt`]
//! sends a spot interruption warning through SQS, then reclaims the instance after a lead
//! time. Never linked into the `updraft` binary.

mod boot;
mod imds;
mod shim;

pub use boot::{BootSettings, Ec2Boot, InstanceRecord, Termination};
