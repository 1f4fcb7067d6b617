//! `deploy/aws`: every CloudFormation template passes `cfn-lint` (PyPI, pinned in the
//! workspace's Python venv), and the Updraft configuration the main template stores in SSM
//! is one `updraft check` accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

const UPDRAFT: &str = env!("CARGO_BIN_EXE_updraft");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `$UPDRAFT_PYTHON`, else the workspace's venv.
fn python() -> PathBuf {
    match std::env::var_os("UPDRAFT_PYTHON") {
        Some(python) if !python.is_empty() => PathBuf::from(python),
        _ => workspace().join(".venv/bin/python"),
    }
}

fn templates() -> Vec<PathBuf> {
    let mut templates: Vec<PathBuf> = std::fs::read_dir(workspace().join("deploy/aws"))
        .expect("deploy/aws")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    templates.sort();
    assert!(!templates.is_empty(), "no templates in deploy/aws");
    templates
}

#[test]
fn every_template_passes_cfn_lint() {
    let output = Command::new(python())
        .args(["-c", "import sys; from cfnlint.runner import main; sys.argv[0] = 'cfn-lint'; sys.exit(main())"])
        .args(templates())
        .output()
        .expect("run cfn-lint (pip install cfn-lint==1.58.0 into the venv UPDRAFT_PYTHON names)");
    assert!(
        output.status.success(),
        "cfn-lint found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Prints the config of `updraft.yaml`'s ConfigParameter with its `Fn::Sub` variables filled.
const EXTRACT_CONFIG: &str = r#"
import re, sys
from cfnlint.decode import decode
template, matches = decode(sys.argv[1])
assert not matches, matches
text, variables = template["Resources"]["ConfigParameter"]["Properties"]["Value"]["Fn::Sub"]
values = {"AWS::StackName": "updraft", "JobsQueue": "https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
          "BuildkiteQueue": "default", "JobsProject": "updraft-jobs", "Cluster": "updraft",
          "JobTaskDefinition": "arn:aws:ecs:us-east-1:123456789012:task-definition/updraft-job:1",
          "JobSecurityGroup": "sg-0123", "SubnetA": "subnet-a", "SubnetB": "subnet-b", "PublicIp": "false"}
missing = set(re.findall(r"\$\{([^}]+)\}", text)) - set(values)
assert not missing, missing
print(re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], text))
"#;

#[test]
fn the_config_the_stack_stores_is_one_updraft_accepts() {
    let template = workspace().join("deploy/aws/updraft.yaml");
    let output = Command::new(python())
        .args(["-c", EXTRACT_CONFIG])
        .arg(&template)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("updraft.toml");
    std::fs::write(&config, &output.stdout).unwrap();
    let checked = Command::new(UPDRAFT)
        .args(["check", "--config"])
        .arg(&config)
        .env("BUILDKITE_AGENT_TOKEN", "bkct_deploy_test")
        .output()
        .expect("run updraft check");
    assert!(
        checked.status.success(),
        "updraft check refused the stack's config:\n{}{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
}
