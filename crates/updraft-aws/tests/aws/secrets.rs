//! Secrets against moto: `ssm:` and `secretsmanager:` references resolve to their values,
//! and the Elastic CI Stack's S3 layout becomes a job's environment (env files parsed, SSH
//! keys and git credentials as private files), with objects not encrypted with KMS refused
//! by name unless allowed, and a missing bucket failing clearly.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use updraft_agent::{EnvironmentProvider, JobEnvironment};
use updraft_aws::s3_secrets::S3Secrets;
use updraft_aws::secrets::SecretRef;
use updraft_aws::settings::AwsSettings;
use updraft_aws::AwsClients;
use updraft_aws_fakes::{s3_client, sdk_config, Moto};

const SSH_KEY: &str =
    "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-really-a-key\n-----END OPENSSH PRIVATE KEY-----";

async fn moto() -> (Moto, AwsClients) {
    crate::support::install_crypto();
    let moto = Moto::start().await.expect("moto");
    let clients = AwsClients::new(sdk_config(moto.endpoint()), &AwsSettings::default());
    (moto, clients)
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

async fn provide(
    secrets: &S3Secrets,
    slug: &str,
    dir: &std::path::Path,
) -> Result<BTreeMap<String, String>, String> {
    let env: BTreeMap<String, String> =
        [("BUILDKITE_PIPELINE_SLUG".to_string(), slug.to_string())].into();
    secrets
        .provide(JobEnvironment {
            job_id: "job",
            env: &env,
            private_dir: dir,
        })
        .await
        .map(|provided| provided.env)
}

#[tokio::test]
async fn references_resolve_from_parameter_store_and_secrets_manager() {
    let (moto, clients) = moto().await;
    clients
        .ssm()
        .put_parameter()
        .name("/ci/agent-token")
        .value("bkct_from_ssm")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    clients
        .secrets_manager()
        .create_secret()
        .name("ci/plain")
        .secret_string("bkct_plain")
        .send()
        .await
        .unwrap();
    clients
        .secrets_manager()
        .create_secret()
        .name("ci/json")
        .secret_string(r#"{"agent":"bkct_json","webhook":"w"}"#)
        .send()
        .await
        .unwrap();
    for (reference, expected) in [
        ("ssm:/ci/agent-token", "bkct_from_ssm"),
        ("secretsmanager:ci/plain", "bkct_plain"),
        ("secretsmanager:ci/json#agent", "bkct_json"),
    ] {
        let reference: SecretRef = reference.parse().unwrap();
        assert_eq!(
            reference.resolve(&clients).await.unwrap().expose(),
            expected
        );
    }
    let missing: SecretRef = "ssm:/ci/nope".parse().unwrap();
    let error = missing.resolve(&clients).await.unwrap_err();
    assert!(
        error.starts_with("ssm:/ci/nope: GetParameter: ParameterNotFound"),
        "{error}"
    );
    let error = "secretsmanager:ci/json#nope"
        .parse::<SecretRef>()
        .unwrap()
        .resolve(&clients)
        .await
        .unwrap_err();
    assert!(!error.contains("bkct_json"), "{error}");
    drop(moto);
}

#[tokio::test]
async fn the_elastic_stack_layout_becomes_the_jobs_environment_and_files() {
    let (moto, clients) = moto().await;
    let s3 = s3_client(clients.sdk_config());
    s3.create_bucket()
        .bucket("ci-secrets")
        .send()
        .await
        .unwrap();
    put(&s3, "env", "export SHARED=root\nOVERRIDDEN=root\n", true).await;
    put(
        &s3,
        "app/env",
        "OVERRIDDEN='from pipeline'\nDB_HOST=db.internal\n",
        true,
    )
    .await;
    put(&s3, "app/private_ssh_key", SSH_KEY, true).await;
    put(
        &s3,
        "app/git-credentials",
        "https://bot:s3cr3t@github.com\n",
        true,
    )
    .await;
    put(&s3, "secret-files/NPM_TOKEN", "npm-t0ken", true).await;
    put(&s3, "app/secret-files/DB_PASSWORD", "hunter2", true).await;
    put(&s3, "app/secret-files/README", "not a secret name", true).await;
    put(&s3, "other/env", "NOT_MINE=1\n", true).await;

    let dir = tempfile::tempdir().unwrap();
    let secrets = S3Secrets::new(s3.clone(), "ci-secrets", None, false);
    let env = provide(&secrets, "app", dir.path())
        .await
        .expect("provided");
    assert_eq!(env["SHARED"], "root");
    assert_eq!(env["OVERRIDDEN"], "from pipeline");
    assert_eq!(env["DB_HOST"], "db.internal");
    assert_eq!(env["NPM_TOKEN"], "npm-t0ken");
    assert_eq!(env["DB_PASSWORD"], "hunter2");
    assert!(!env.contains_key("README") && !env.contains_key("NOT_MINE"));
    let ssh = &env["GIT_SSH_COMMAND"];
    let key_path = dir.path().join("ssh-key-0");
    assert_eq!(
        ssh,
        &format!("ssh -o IdentitiesOnly=yes -i '{}'", key_path.display())
    );
    assert_eq!(
        std::fs::read_to_string(&key_path).unwrap(),
        format!("{SSH_KEY}\n")
    );
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let credentials = dir.path().join("git-credentials");
    assert_eq!(
        env["GIT_CONFIG_PARAMETERS"],
        format!("'credential.helper=store --file={}'", credentials.display())
    );
    assert_eq!(
        std::fs::read_to_string(credentials).unwrap(),
        "https://bot:s3cr3t@github.com\n"
    );
    assert!(!format!("{secrets:?}").contains("hunter2"));
    drop(moto);
}

#[tokio::test]
async fn an_unencrypted_object_is_refused_by_name_unless_allowed_and_a_missing_bucket_fails() {
    let (moto, clients) = moto().await;
    let s3 = s3_client(clients.sdk_config());
    s3.create_bucket()
        .bucket("ci-secrets")
        .send()
        .await
        .unwrap();
    put(&s3, "app/env", "API_KEY=plain-secret\n", false).await;
    let dir = tempfile::tempdir().unwrap();

    let strict = S3Secrets::new(s3.clone(), "ci-secrets", None, false);
    let error = provide(&strict, "app", dir.path()).await.unwrap_err();
    assert!(
        error.starts_with(
            "s3://ci-secrets/app/env is not encrypted with KMS (server-side encryption: "
        ),
        "{error}"
    );
    assert!(
        error.contains("--sse aws:kms") && !error.contains("plain-secret"),
        "{error}"
    );

    let lenient = S3Secrets::new(s3.clone(), "ci-secrets", None, true);
    assert_eq!(
        provide(&lenient, "app", dir.path()).await.unwrap()["API_KEY"],
        "plain-secret"
    );

    let missing = S3Secrets::new(s3.clone(), "no-such-bucket", None, false);
    let error = provide(&missing, "app", dir.path()).await.unwrap_err();
    assert_eq!(error, "S3 bucket \"no-such-bucket\" not found");
    drop(moto);
}
