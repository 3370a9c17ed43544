"""The restart_budget scenario's S3 server side: keys that moto enforces, then revokes.

Runs on the controller with the molecule venv's Python (boto3 comes with
moto[server]), against the moto_server of scripts/molecule-all
(OBSCTL_S3_ENDPOINT, host loopback).

    s3_iam.py setup STATE.json     buckets, IAM users, policies, access keys; then auth on
    s3_iam.py open                 auth off again (every other scenario signs with made-up keys)

moto accepts any key until told otherwise: POST /moto-api/reset-auth with a
number N makes it enforce IAM after N more requests (0: at once; "inf": never),
moto 5.2.6 moto/moto_api/_internal/responses.py reset_auth_response, which sets
settings.INITIAL_NO_AUTH_ACTION_COUNT read by moto/core/authorization.py
ActionAuthenticatorMixin. AWS-managed policy ARNs do not exist in moto, so the
policies are created here (/work/shared/ENVIRONMENT.md).

The state file (JSON): {"endpoint", "admin": {"id", "secret"},
"mounts": {NAME: {"bucket", "user", "id", "secret"}}}. It holds secrets: 0600,
in molecule's ephemeral directory, removed with the scenario.
"""

from __future__ import annotations

import json
import os
import sys

import boto3
import requests

#: the scenario's mounts: name -> bucket (molecule.yml's fuse_mounts_list uses the same names)
MOUNTS = {"revoked-key": "restart-budget-key", "gone-bucket": "restart-budget-gone"}
REGION = "us-east-1"


def client(service: str, endpoint: str, key_id: str = "setup", secret: str = "setup"):
    """A boto3 client of ``service`` on ``endpoint`` signing with the given key."""
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=key_id, aws_secret_access_key=secret)


def set_auth(endpoint: str, count: str) -> None:
    """Enforce IAM after ``count`` more requests ("0": now, "inf": never). Raises on an HTTP error."""
    requests.post(f"{endpoint}/moto-api/reset-auth", data=count, timeout=10).raise_for_status()


def user_with_key(iam, name: str, policy_arn: str) -> dict:
    """Create IAM user ``name`` with ``policy_arn`` attached and one access key: {"user", "id", "secret"}."""
    iam.create_user(UserName=name)
    iam.attach_user_policy(UserName=name, PolicyArn=policy_arn)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"user": name, "id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def policy(iam, name: str, action: str) -> str:
    """Create an Allow-``action``-on-everything policy; its ARN."""
    doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]}
    return iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(doc))["Policy"]["Arn"]


def setup(endpoint: str, state_path: str) -> None:
    """Buckets (versioned, one object each, as molecule/_shared/prepare.yml), one IAM user
    and key per mount (s3:*), an admin key (*) for the verifier; write the state; auth on;
    prove that a made-up key is refused and the mount keys work."""
    set_auth(endpoint, "inf")
    s3, iam = client("s3", endpoint), client("iam", endpoint)
    for bucket in MOUNTS.values():
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_object(Bucket=bucket, Key="hello.txt", Body=f"hello from {bucket}\n".encode())
    s3_all = policy(iam, "restart-budget-s3", "s3:*")
    admin_all = policy(iam, "restart-budget-admin", "*")
    state = {"endpoint": endpoint, "admin": user_with_key(iam, "restart-budget-admin", admin_all), "mounts": {}}
    for name, bucket in MOUNTS.items():
        state["mounts"][name] = {"bucket": bucket, **user_with_key(iam, f"restart-budget-{name}", s3_all)}
    fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(state, f)
    set_auth(endpoint, "0")
    try:
        client("s3", endpoint, "AKIAMADEUPMADEUP0000", "made-up").list_objects_v2(Bucket="restart-budget-key")
    except s3.exceptions.ClientError as exc:
        print(f"a made-up key is refused: {exc.response['Error']['Code']}")
    else:
        raise SystemExit("moto accepted a made-up key after reset-auth 0: IAM is not enforced")
    for name, m in state["mounts"].items():
        client("s3", endpoint, m["id"], m["secret"]).list_objects_v2(Bucket=m["bucket"])
        print(f"the key of {name} lists {m['bucket']}")


def main(argv: list[str]) -> int:
    """Command line: see the module's docstring."""
    endpoint = os.environ.get("OBSCTL_S3_ENDPOINT", "")
    if not endpoint:
        print("OBSCTL_S3_ENDPOINT is not set; run the scenario with scripts/molecule-all", file=sys.stderr)
        return 2
    if argv[:1] == ["setup"] and len(argv) == 2:
        setup(endpoint, argv[1])
    elif argv == ["open"]:
        set_auth(endpoint, "inf")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
