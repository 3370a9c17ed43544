"""A real S3-compatible server on loopback for tests: ``moto_server``.

``S3Server().start()`` runs ``moto_server -H 127.0.0.1 -p PORT`` (the one in
the same bin directory as the running Python) and waits until it answers.
With ``auth=True`` it enforces SigV4 signatures: moto is started with
``INITIAL_NO_AUTH_ACTION_COUNT`` set to the exact number of set-up calls made
here (create user, create policy, attach policy, create access key), so from
the fifth authenticated action on, only the created key works and a wrong
secret gets ``SignatureDoesNotMatch``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from .net import free_port

__all__ = ["S3Server", "AUTH_SETUP_ACTIONS", "moto_server_binary"]

#: The IAM calls made before auth is enforced: CreateUser, CreatePolicy,
#: AttachUserPolicy, CreateAccessKey. moto counts every action that goes
#: through its authenticator (not the /moto-api/ endpoints used for the
#: readiness check); tests/integration/test_harness.py checks
#: that this count is exact (one more set-up call would be refused).
AUTH_SETUP_ACTIONS = 4

DEFAULT_ACCESS_KEY = "testing-access-key"
DEFAULT_SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"


def moto_server_binary() -> str | None:
    """``moto_server`` next to sys.executable, else on PATH."""
    candidate = Path(sys.executable).parent / "moto_server"
    if candidate.exists():
        return str(candidate)
    return shutil.which("moto_server")


@dataclass
class S3Server:
    """A moto_server subprocess. Use as a context manager or start()/stop()."""

    auth: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 30.0) -> "S3Server":
        binary = moto_server_binary()
        if binary is None:
            raise RuntimeError("moto_server not found (pip install 'moto[server]')")
        self.port = self.port or free_port(self.host)
        env = dict(os.environ)
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(AUTH_SETUP_ACTIONS)
        # moto must not see real credentials or pick a region from the host
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            env.pop(var, None)
        fd, log = tempfile.mkstemp(prefix="moto-", suffix=".log")
        self.log_path = Path(log)
        self.proc = subprocess.Popen(
            [binary, "-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        os.close(fd)
        self._wait_ready(timeout)
        if self.auth:
            self.access_key, self.secret_key = self._create_iam_key()
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.endpoint}/moto-api/data.json"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                rc, log = self.proc.returncode, self.log()
                self.stop()
                raise RuntimeError(f"moto_server exited with {rc}:\n{log}")
            try:
                # /moto-api/ does not go through moto's authenticator, so it
                # does not consume one of the INITIAL_NO_AUTH actions
                r = requests.get(url, timeout=1, proxies={"http": None, "https": None})
                if r.status_code == 200:
                    return
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.1)
        log = self.log()
        self.stop()
        raise RuntimeError(f"moto_server not answering on {url} after {timeout}s: {last}\n{log}")

    def _create_iam_key(self) -> tuple[str, str]:
        iam = self.client("iam", access_key="setup", secret_key="setup")
        user = "obsctl-test"
        iam.create_user(UserName=user)  # 1
        policy = iam.create_policy(  # 2
            PolicyName="obsctl-test-s3-all",
            PolicyDocument=(
                '{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
                '"Action":"s3:*","Resource":"*"}]}'
            ),
        )
        iam.attach_user_policy(UserName=user, PolicyArn=policy["Policy"]["Arn"])  # 3
        key = iam.create_access_key(UserName=user)["AccessKey"]  # 4
        return key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients -------------------------------------------------------------

    def client(self, service: str = "s3", access_key: str | None = None,
               secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            # http endpoint: never let the host's AWS_CA_BUNDLE matter
            verify=False,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=5, read_timeout=30,
            ),
        )

    def create_bucket(self, name: str, objects: dict[str, bytes] | None = None) -> None:
        s3 = self.client()
        s3.create_bucket(Bucket=name)
        for key, body in (objects or {}).items():
            s3.put_object(Bucket=name, Key=key, Body=body)

    def get_object(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return out
