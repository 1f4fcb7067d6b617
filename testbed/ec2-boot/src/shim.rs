//! The `aws` command the instances' boot scripts find on `PATH`: a few lines of Python on
//! the moto test bed's interpreter (boto3 comes with moto) that do exactly the two calls a
//! boot script makes, against moto.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const SCRIPT: &str = r#"import os, sys
import boto3

args = sys.argv[1:]

def option(name):
    return args[args.index(name) + 1]

def client(service):
    return boto3.client(
        service,
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )

if args[:2] == ["ssm", "get-parameter"]:
    parameter = client("ssm").get_parameter(
        Name=option("--name"), WithDecryption="--with-decryption" in args
    )
    print(parameter["Parameter"]["Value"])
elif args[:2] == ["ec2", "create-tags"]:
    pairs = dict(part.split("=", 1) for part in option("--tags").split(","))
    client("ec2").create_tags(
        Resources=[option("--resources")],
        Tags=[{"Key": pairs["Key"], "Value": pairs["Value"]}],
    )
else:
    sys.exit("aws stand-in: unsupported command: " + " ".join(args))
"#;

/// Write the `aws` command into `dir`, run by `python`.
pub(crate) fn write(dir: &Path, python: &Path) -> std::io::Result<()> {
    let path = dir.join("aws");
    std::fs::write(&path, format!("#!{}\n{SCRIPT}", python.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
}
