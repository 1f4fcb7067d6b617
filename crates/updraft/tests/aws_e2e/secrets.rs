//! `updraft agent start --secrets-bucket`, end to end against moto's S3: a pipeline's `env`
//! and SSH key from the Elastic CI Stack's layout reach its job (the job proves it by their
//! hashes); an object not encrypted with KMS is refused with a clear message in the job log;
//! no secret value appears in any output — the agent's stdout and stderr, or the job log.

use crate::support::{AwsWorld, SERIAL, UPDRAFT};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use sha2::{Digest, Sha256};
use updraft_aws_fakes::{s3_client, sdk_config};
use updraft_emulator::JobState;
use uuid::Uuid;

const DEPLOY_TOKEN: &str = "s3cr3t-deploy-token-4711";
const NPM_TOKEN: &str = "npm_0123456789abcdef";
const SSH_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-not-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n";
const PLAIN_SECRET: &str = "plaintext-secret-never-served";

/// Shows what arrived without showing it.
const JOB: &str = r#"echo "greeting=$GREETING"
echo "deploy-sha=$(printf %s "$DEPLOY_TOKEN" | sha256sum | cut -c1-64)"
key=$(echo "$GIT_SSH_COMMAND" | sed -n "s/.*-i '\([^']*\)'.*/\1/p")
echo "key-sha=$(sha256sum < "$key" | cut -c1-64)"
test -n "$NPM_TOKEN" && echo npm-token-present"#;

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

async fn put(s3: &aws_sdk_s3::Client, key: &str, body: &str, kms: bool) {
    s3.put_object()
        .bucket("ci-secrets")
        .key(key)
        .body(ByteStream::from(body.as_bytes().to_vec()))
        .set_server_side_encryption(kms.then_some(ServerSideEncryption::AwsKms))
        .send()
        .await
        .expect("PutObject");
}

/// Run the agent for one job; its stdout and stderr.
async fn agent(world: &AwsWorld, job: Uuid) -> String {
    let output = tokio::process::Command::new(UPDRAFT)
        .args([
            "agent",
            "start",
            "--acquire-job",
            &job.to_string(),
            "--secrets-bucket",
            "ci-secrets",
        ])
        .env(
            "BUILDKITE_AGENT_TOKEN",
            world.emulator.agent_token().expose(),
        )
        .env("BUILDKITE_AGENT_ENDPOINT", world.emulator.agent_endpoint())
        .env("BUILDKITE_BUILD_PATH", world.path("builds"))
        .env("BUILDKITE_SKIP_CHECKOUT", "true")
        .env("AWS_ENDPOINT_URL", world.bed.moto_endpoint())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("UPDRAFT_LOG", "debug")
        .output()
        .await
        .expect("run the agent");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_secret_in(what: &str, text: &str) {
    for secret in [
        DEPLOY_TOKEN,
        NPM_TOKEN,
        "b3BlbnNzaC1rZXktdjEAAAAA",
        PLAIN_SECRET,
    ] {
        assert!(!text.contains(secret), "a secret value in {what}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelines_env_and_ssh_key_reach_its_job_and_unencrypted_secrets_are_refused() {
    let _serial = SERIAL.lock().await;
    let world = AwsWorld::start().await;
    let s3 = s3_client(&sdk_config(world.bed.moto_endpoint()));
    s3.create_bucket()
        .bucket("ci-secrets")
        .send()
        .await
        .expect("CreateBucket");
    put(
        &s3,
        "acme/env",
        &format!("GREETING=from-s3\nexport DEPLOY_TOKEN='{DEPLOY_TOKEN}'\n"),
        true,
    )
    .await;
    put(&s3, "acme/private_ssh_key", SSH_KEY, true).await;
    put(&s3, "secret-files/NPM_TOKEN", NPM_TOKEN, true).await;
    put(
        &s3,
        "plain/env",
        &format!("API_KEY={PLAIN_SECRET}\n"),
        false,
    )
    .await;

    world
        .emulator
        .create_pipeline(
            "acme",
            &format!("steps:\n  - command: {}\n", crate::support::quote(JOB)),
        )
        .unwrap();
    let job = world.emulator.create_build("acme").unwrap().job_ids[0];
    let output = agent(&world, job).await;
    assert_eq!(
        world.emulator.job_state(job),
        Some(JobState::Passed),
        "{output}"
    );
    let log = String::from_utf8(world.emulator.job_log(job).unwrap()).unwrap();
    assert!(log.contains("greeting=from-s3\n"), "{log}");
    assert!(
        log.contains(&format!("deploy-sha={}\n", sha(DEPLOY_TOKEN))),
        "{log}"
    );
    assert!(
        log.contains(&format!("key-sha={}\n", sha(SSH_KEY))),
        "{log}"
    );
    assert!(log.contains("npm-token-present\n"), "{log}");
    assert_no_secret_in("the agent's output", &output);
    assert_no_secret_in("the job log", &log);
    assert!(
        output.contains("secrets from S3 added to the job"),
        "{output}"
    );

    world
        .emulator
        .create_pipeline("plain", "steps:\n  - command: echo never\n")
        .unwrap();
    let job = world.emulator.create_build("plain").unwrap().job_ids[0];
    let output = agent(&world, job).await;
    assert_eq!(
        world.emulator.job_state(job),
        Some(JobState::Failed),
        "{output}"
    );
    let log = String::from_utf8(world.emulator.job_log(job).unwrap()).unwrap();
    assert!(
        log.contains("s3://ci-secrets/plain/env is not encrypted with KMS (server-side encryption: none); upload it with `--sse aws:kms`"),
        "{log}"
    );
    assert!(!log.contains("never"), "the job must not run: {log}");
    assert_no_secret_in("the agent's output", &output);
    assert_no_secret_in("the job log", &log);
}
