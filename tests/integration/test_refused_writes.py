"""Bytes the bucket refuses are not counted as written (issue 17, "a write the bucket refuses
still adds its bytes to obsctl_fs_write_bytes_total").

A real moto S3 server on loopback enforcing IAM: one access key that may do everything
(``s3:*``) except ``s3:PutObject`` on one bucket (moto 5.2.6 evaluates identity-policy Deny
statements, moto/iam/access_control.py; its S3 action map names PUT and the multipart POSTs
``PutObject``, moto/s3/responses.py ACTION_MAP). rclone and s3fs mount it with that key under
``obsctl mount``; a file is written through the mount (every WRITE answered 0: the drivers
only buffer) and closed: the upload at FLUSH gets 403 and ``close(2)`` fails (s3fs: EPERM,
rclone ``--vfs-cache-mode off``, obsctl's default: EIO). The eBPF source must then count the
N bytes in ``obsctl_fs_write_refused_bytes_total`` and not in ``obsctl_fs_write_bytes_total``;
the same workload on a writable bucket counts N written and 0 refused.

The numbers are read as other tests read them: the OTLP receiver (what obsctl exported) and
``obsctl status --json`` (its state file). Skips, with the reason, where the BPF probe cannot
load: the tracefs source and the driver logs see no file handle (docs/metrics.md, "Written
and refused bytes").
"""

from __future__ import annotations

import errno
import json
import os

import pytest
import requests

from support.obsctl import obsctl_env, require_ebpf, s3_mount_args, status_entry
from support.s3server import S3Server
from support.waiting import wait_until

#: Bytes written per file: three write(2)s of 30,000 (each one FUSE WRITE: below max_write,
#: no writeback cache), under rclone's --streaming-upload-cutoff (100 KiB, rclone
#: docs/content/docs.md): rclone buffers the whole file and uploads it with one PUT in Flush,
#: so no WRITE is refused early and all N bytes reach the FLUSH.
CHUNK = 30_000
N = 3 * CHUNK
#: The object each driver overwrites (s3fs in place: it PUTs an empty object at create, which
#: the refusing bucket would refuse before any write; rclone with O_TRUNC)
ORIGINAL = b"o" * 1000
REFUSING, WRITABLE = "refused-writes-deny", "refused-writes-allow"
#: what close(2) says when the upload is refused (checked by hand with each driver alone:
#: s3fs 1.90 "HTTP response code 403, returning EPERM"; rclone 1.60.1 "IO error: AccessDenied")
CLOSE_ERRNO = {"s3fs": errno.EPERM, "rclone": errno.EIO}
#: the FLUSH's errno as obsctl_errors_total names it
FLUSH_ERROR = {"s3fs": "eperm", "rclone": "eio"}


@pytest.fixture(autouse=True, scope="module")
def _probe_loads():
    require_ebpf(" (the only source that tells refused bytes apart)")


def _set_auth(endpoint: str, count: str) -> None:
    """moto: enforce IAM after ``count`` more requests ("0": at once, "inf": never);
    POST /moto-api/reset-auth, moto 5.2.6 moto/moto_api/_internal/responses.py."""
    requests.post(f"{endpoint}/moto-api/reset-auth", data=count, timeout=10,
                  proxies={"http": None, "https": None}).raise_for_status()


@pytest.fixture(scope="module")
def deny_server():
    """moto with two buckets, each holding the object s3fs overwrites, and one key that may
    not PutObject into REFUSING; IAM enforced from then on. Yields (server, key id, secret,
    a boto3 S3 client signing with that key)."""
    server = S3Server().start()
    try:
        _set_auth(server.endpoint, "inf")
        s3 = server.client(access_key="setup", secret_key="setup")
        iam = server.client("iam", access_key="setup", secret_key="setup")
        for bucket in (REFUSING, WRITABLE):
            s3.create_bucket(Bucket=bucket)
            for impl in CLOSE_ERRNO:
                s3.put_object(Bucket=bucket, Key=f"{impl}.bin", Body=ORIGINAL)
        doc = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{REFUSING}/*"}]}
        arn = iam.create_policy(PolicyName="no-put-into-refusing",
                                PolicyDocument=json.dumps(doc))["Policy"]["Arn"]
        iam.create_user(UserName="writer")
        iam.attach_user_policy(UserName="writer", PolicyArn=arn)
        key = iam.create_access_key(UserName="writer")["AccessKey"]
        _set_auth(server.endpoint, "0")
        ours = server.client(access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"])
        with pytest.raises(ours.exceptions.ClientError, match="AccessDenied"):
            ours.put_object(Bucket=REFUSING, Key="probe", Body=b"1")
        ours.put_object(Bucket=WRITABLE, Key="probe", Body=b"1")  # the control bucket takes it
        yield server, key["AccessKeyId"], key["SecretAccessKey"], ours
    finally:
        server.stop()


def _write_and_close(path: str, impl: str, data: bytes) -> OSError | None:
    """Write ``data`` in CHUNK-sized write(2)s (each must succeed) and close; the close's error."""
    if impl == "s3fs":
        flags = os.O_WRONLY  # overwrite the existing object in place (see ORIGINAL)
    else:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC  # rclone, cache mode off: a new object
    fd = os.open(path, flags, 0o644)
    try:
        for i in range(0, len(data), CHUNK):
            assert os.write(fd, data[i:i + CHUNK]) == CHUNK
    except BaseException:
        os.close(fd)
        raise
    try:
        os.close(fd)
    except OSError as exc:
        return exc
    return None


def _kernel(env, mountpoint) -> dict:
    return (status_entry(env, mountpoint) or {}).get("sources", {}).get("kernel_trace") or {}


@pytest.mark.parametrize("bucket", [REFUSING, WRITABLE])
def test_refused_bytes_are_not_written_bytes(impl, bucket, deny_server, mountpoint, runtime_dir, otlp,
                                             telemetry_toml, start_mount):
    """N bytes written and closed: into the refusing bucket, close(2) fails, refused == N and
    written grew by 0; into the writable one, written == N and refused == 0."""
    server, key_id, secret, s3 = deny_server
    env = obsctl_env(runtime_dir, key_id, secret)
    tel = telemetry_toml(export_interval_seconds=1)
    if impl == "s3fs":
        # moto and s3fs 1.90 disagree on the SigV4 signature of s3fs's list request (GET
        # /bucket/?delimiter=/&...: SignatureDoesNotMatch with the right key; the same skip in
        # test_failures.py), and obsctl's ready check lists the root: IAM is enforced from the
        # moment the mount is ready (s3fs's HEAD, GET and PUT sign as moto expects). The key and
        # its Deny are the same; only the set-up list goes unchecked.
        _set_auth(server.endpoint, "inf")
    try:
        m = start_mount(s3_mount_args(bucket, mountpoint, impl, server.endpoint, tel), env)
        m.wait_ready(30)
    finally:
        _set_auth(server.endpoint, "0")
    wait_until(lambda: _kernel(env, mountpoint).get("connection"), 10, "the eBPF source watching the connection")
    st = status_entry(env, mountpoint)
    assert st["sources"]["fs_bytes"] == "kernel" and st["sources"]["kernel_trace"]["source"] == "ebpf", st
    written_before = st["write_bytes"]
    attrs = {"bucket": bucket, "impl": impl}

    data = os.urandom(N)
    key = f"{impl}.bin"
    closed = _write_and_close(str(mountpoint / key), impl, data)

    if bucket == REFUSING:
        assert closed is not None and closed.errno == CLOSE_ERRNO[impl], (closed, m.output()[-3000:])
        # whichever counter the bytes go to, wait until they got there, then for two more polls
        # (the RELEASE after the failed FLUSH may commit what is left)
        wait_until(lambda: (otlp.latest("obsctl_fs_write_refused_bytes", **attrs) or 0) >= N
                   or status_entry(env, mountpoint)["write_bytes"] > written_before, 20,
                   "the N bytes counted somewhere")
        polls = _kernel(env, mountpoint)["polls"]
        wait_until(lambda: _kernel(env, mountpoint).get("polls", 0) >= polls + 2, 10, "two more polls")
        st = status_entry(env, mountpoint)
        assert st["write_bytes"] - written_before == 0, f"written grew by {st['write_bytes'] - written_before}"
        assert st["write_refused_bytes"] == N and st["live"]["write_refused_bytes"] == N, st
        assert st["sources"]["kernel_trace"]["pending_write_bytes"] == 0, st["sources"]
        wait_until(lambda: otlp.latest("obsctl_fs_write_refused_bytes", **attrs) == N, 10,
                   lambda: f"refused bytes exported: {otlp.latest('obsctl_fs_write_refused_bytes', **attrs)}")
        assert (otlp.latest("obsctl_fs_write_bytes", **attrs) or 0) == 0
        errors = {p.attributes["error_type"]: p.value for p in otlp.points("obsctl_errors", **attrs)}
        assert errors.get(FLUSH_ERROR[impl], 0) >= 1, errors
        # and the driver's own word for it, from its log, while the mount stays quiet: s3fs's log is
        # line-buffered (obsctl.drivers.s3fs: stdbuf -oL), so its 403 line is not held back in a block
        wait_until(lambda: any(p.attributes["error_type"] == "http_403" and p.value >= 1
                               for p in otlp.points("obsctl_errors", **attrs)), 10,
                   lambda: f"http_403 from the driver's log: {otlp.points('obsctl_errors', **attrs)}")
        errors = {p.attributes["error_type"]: p.value for p in otlp.points("obsctl_errors", **attrs)}
        assert s3.get_object(Bucket=REFUSING, Key=key)["Body"].read() == ORIGINAL  # the bucket really refused
        print(f"{impl}: close -> {errno.errorcode[closed.errno]}; refused {N}, written +0; errors {errors}")
    else:
        assert closed is None, closed
        wait_until(lambda: status_entry(env, mountpoint)["write_bytes"] - written_before == N, 20,
                   lambda: f"write_bytes {status_entry(env, mountpoint)['write_bytes']} - {written_before} == {N}")
        wait_until(lambda: otlp.latest("obsctl_fs_write_bytes", **attrs) == N, 20,
                   lambda: f"written bytes exported: {otlp.latest('obsctl_fs_write_bytes', **attrs)}")
        assert (otlp.latest("obsctl_fs_write_refused_bytes", **attrs) or 0) == 0
        assert s3.get_object(Bucket=WRITABLE, Key=key)["Body"].read() == data
        print(f"{impl}: close ok; written {N}, refused 0")
    assert m.stop(30) == 0, m.output()[-3000:]
