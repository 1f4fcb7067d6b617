//! The user data every instance of a pool fleet boots with: a bash script that starts the
//! fleet's agents, drains them once when the scheduler tags the instance, and reports when
//! they are all gone. User data is plain text anyone with `ec2:DescribeInstanceAttribute`
//! can read, so it holds no secret: the agent token is read on the instance from SSM.
//!
//! 1. Read the instance id and region from instance metadata (IMDSv2; the endpoint is
//!    `AWS_EC2_METADATA_SERVICE_ENDPOINT` when set, as the AWS SDKs and CLI honour it).
//! 2. Read the agent token from SSM Parameter Store and start `agents` agents, each named
//!    `<instance id>-<n>`, with the fleet's environment.
//! 3. Every `drain_poll`, read the instance's `updraft:drain` tag from metadata; when it
//!    appears, send each agent one SIGTERM (it finishes its job, then disconnects). Never a
//!    second signal: that would cancel the job.
//! 4. When every agent has exited, tag the instance `updraft:agents = exited`; the scheduler
//!    then terminates it, decrementing its group.

use crate::tags::{DRAIN_TAG, EXITED_TAG, EXITED_VALUE};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the boot script needs to know.
#[derive(Debug, Clone)]
pub struct BootScript<'a> {
    pub fleet: &'a str,
    pub agents: u32,
    /// The agent program and its arguments.
    pub command: &'a [String],
    /// Plain environment for every agent (no secrets).
    pub env: &'a BTreeMap<String, String>,
    /// The SSM SecureString holding the agent registration token.
    pub token_parameter: &'a str,
    /// Where agent logs go (`<dir>/<instance id>/agent-<n>.log`).
    pub agent_dir: &'a str,
    pub drain_poll: Duration,
}

/// `value` as one bash word, in single quotes.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

impl BootScript<'_> {
    /// The script; an environment variable whose name is not a shell identifier is refused.
    pub fn render(&self) -> Result<String, String> {
        if let Some(bad) = self.env.keys().find(|key| !is_identifier(key)) {
            return Err(format!(
                "environment variable {bad:?} is not a shell variable name (letters, digits and _, not starting with a digit)"
            ));
        }
        let env: String = self
            .env
            .iter()
            .map(|(key, value)| format!("export {key}={}\n", quote(value)))
            .collect();
        let command: Vec<String> = self.command.iter().map(|arg| quote(arg)).collect();
        Ok(format!(
            r#"#!/bin/bash
# Updraft pool member of fleet {fleet}: {agents} agent(s) named <instance id>-<n>. The tag
# {DRAIN_TAG} drains them (one SIGTERM each: finish the job, then disconnect); when all have
# exited the instance is tagged {EXITED_TAG}={EXITED_VALUE} and the scheduler terminates it.
set -u
imds="${{AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}}"
imds_token=$(curl -sf -X PUT "$imds/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600')
metadata() {{ curl -sf -H "X-aws-ec2-metadata-token: $imds_token" "$imds/latest/meta-data/$1"; }}
instance=$(metadata instance-id)
export AWS_DEFAULT_REGION="$(metadata placement/region)"
dir={dir}/"$instance"
mkdir -p "$dir"
{env}agent_token=$(aws ssm get-parameter --name {parameter} --with-decryption --query Parameter.Value --output text)
pids=
for n in $(seq 1 {agents}); do
  BUILDKITE_AGENT_TOKEN="$agent_token" BUILDKITE_AGENT_NAME="$instance-$n" {command} >"$dir/agent-$n.log" 2>&1 &
  pids="$pids $!"
done
unset agent_token
drained=
while :; do
  running=
  for pid in $pids; do kill -0 "$pid" 2>/dev/null && running=1; done
  [ -z "$running" ] && break
  if [ -z "$drained" ] && metadata tags/instance/{DRAIN_TAG} >/dev/null; then
    kill -TERM $pids 2>/dev/null
    drained=1
  fi
  sleep {poll}
done
aws ec2 create-tags --resources "$instance" --tags Key={EXITED_TAG},Value={EXITED_VALUE}
"#,
            fleet = quote(self.fleet),
            agents = self.agents,
            dir = quote(self.agent_dir),
            parameter = quote(self.token_parameter),
            command = command.join(" "),
            poll = self.drain_poll.as_secs_f64(),
        ))
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_starts_named_agents_and_holds_no_secret() {
        let env = BTreeMap::from([
            (
                "BUILDKITE_AGENT_TAGS".to_string(),
                "queue=linux".to_string(),
            ),
            ("GREETING".to_string(), "it's me".to_string()),
        ]);
        let command = ["buildkite-agent".to_string(), "start".to_string()];
        let script = BootScript {
            fleet: "warm",
            agents: 2,
            command: &command,
            env: &env,
            token_parameter: "/updraft/pools/warm/agent-token",
            agent_dir: "/var/lib/updraft-agent",
            drain_poll: Duration::from_secs(2),
        }
        .render()
        .unwrap();
        assert!(script.starts_with("#!/bin/bash\n"));
        assert!(script.contains("for n in $(seq 1 2); do"));
        assert!(script.contains(
            "BUILDKITE_AGENT_NAME=\"$instance-$n\" 'buildkite-agent' 'start' >\"$dir/agent-$n.log\""
        ));
        assert!(script.contains("export GREETING='it'\\''s me'\n"));
        assert!(script.contains("--name '/updraft/pools/warm/agent-token' --with-decryption"));
        assert!(script.contains("metadata tags/instance/updraft:drain"));
        assert!(script.contains("Key=updraft:agents,Value=exited"));
        assert_eq!(script.matches("kill -TERM").count(), 1);
        assert!(!script.contains("bkct_"));
    }

    #[test]
    fn a_variable_name_the_shell_cannot_take_is_refused() {
        let env = BTreeMap::from([("NOT-A-NAME".to_string(), "x".to_string())]);
        let script = BootScript {
            fleet: "warm",
            agents: 1,
            command: &["buildkite-agent".to_string()],
            env: &env,
            token_parameter: "/p",
            agent_dir: "/d",
            drain_poll: Duration::from_secs(2),
        };
        assert!(script.render().unwrap_err().contains("\"NOT-A-NAME\""));
    }

    #[test]
    fn quoting_survives_any_value() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }
}
