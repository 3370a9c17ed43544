"""-o driver options: each driver refuses, from its own option reference, the
options that can carry a secret or override what obsctl set up, and says why
and what to do instead; ordinary options pass through unchanged."""

import pytest

from obsctl.config import ConfigError
from obsctl.mountspec import build_mount_spec
from obsctl.drivers import PlanContext, get_driver

VALUE = "Sup3rSecretValue"

# (option, words the message must contain): rclone 1.60 flags.md / rclone_mount.md
RCLONE_REFUSED = [
    (f"--s3-access-key-id={VALUE}", "/proc/PID/cmdline"),
    (f"--s3-secret-access-key={VALUE}", "credentials_from"),
    (f"s3_session_token={VALUE}", "credentials_from"),
    (f"--s3-sse-customer-key={VALUE}", "RCLONE_S3_SSE_CUSTOMER_KEY"),
    (f"--s3-sse-customer-key-base64={VALUE}", "/proc/PID/cmdline"),
    (f"--header=Authorization: Bearer {VALUE}", "Authorization"),
    ("--header-upload=X-Amz-Meta-A: b", "Authorization"),
    ("--s3-env-auth", 'credentials_from = "profile"'),
    ("--s3-shared-credentials-file=/root/.aws/credentials", 'credentials_from = "profile"'),
    ("--s3-profile=prod", 'credentials_from = "profile"'),
    ("--password-command=cat /x", "credentials"),
    ("--config=/root/.config/rclone/rclone.conf", 'obsctl\'s --config ""'),
    ("config=/tmp/r.conf", "redefine the remote"),
    ("--s3-endpoint=http://evil.example", "--endpoint"),
    ("--s3-provider=Minio", "mount spec"),
    ("--rc", "127.0.0.1"),
    ("--rc-addr=0.0.0.0:5572", "beyond loopback"),
    ("rc_addr=:5572", "beyond loopback"),
    ("--rc-no-auth", "without auth"),
    (f"--rc-pass={VALUE}", "random user"),
    ("--rc-user=admin", "random user"),
    ("--rc-htpasswd=/etc/htpasswd", "rc"),
    ("--rc-web-gui", "rc"),
    ("--rc-serve", "rc"),
    ("--log-file=/tmp/rclone.log", "redacts"),
    ("--log-level=ERROR", "metrics"),
    ("--syslog", "journal"),
    ("--use-json-log=false", "stdout"),
    ("-v", "long form"),
    ("-q", "long form"),
    ("--dump=headers,auth", "--dump headers"),
    ("--daemon", "foreground"[:0] + "supervision"),
    ("--no-check-certificate", "--ca-cert"),
    (f"--crypt-password={VALUE}", "another rclone backend"),
    (f"--sftp-pass={VALUE}", "another rclone backend"),
    ("--b2-key=k", "another rclone backend"),
    (f"secret_access_key={VALUE}", "/proc/PID/cmdline"),   # catch-all by word
    (f"--future-api-token={VALUE}", "credentials_from"),
]

RCLONE_ALLOWED = ["--vfs-read-chunk-size=8M", "--dir-cache-time=5s", "--cache-dir=/var/cache/x",
                  "--dump=headers", "--vfs-cache-max-size=1G", "--s3-chunk-size=16M", "--client-key=/etc/k.pem",
                  "--ca-cert=/etc/ca.pem", "--s3-sse-kms-key-id=arn:aws:kms:k", "--transfers=8",
                  "--s3-server-side-encryption=AES256", "--allow-non-empty", "--attr-timeout=2s"]

# s3fs 1.90 man page
S3FS_REFUSED = [
    ("passwd_file=/etc/passwd-s3fs", "credentials_from"),
    ("profile=prod", 'credentials_from = "profile"'),
    ("iam_role=auto", "credential source"),
    ("ecs", "credential source"),
    ("imdsv1only", "IMDSv2"),
    ("ibm_iam_auth", "credential source"),
    ("url=http://evil.example", "mount spec"),
    ("host=http://evil.example", "mount spec"),
    ("endpoint=eu-west-1", "--region"),
    ("bucket=other", "source"),
    ("curldbg=body", "object data"),
    ("dbglevel=crit", "metrics"),
    ("logfile=/tmp/s3fs.log", "redacts"),
    ("no_time_stamp_msg", "metrics"),
    ("no_check_certificate", "trust store"),
    ("ssl_verify_hostname=0", "trust store"),
    ("-d", "NAME[=VALUE]"),
    ("-opasswd_file=/x", "NAME[=VALUE]"),
    ("allow_other,passwd_file=/x", "clear-text passwd file"),
    (f"secret={VALUE}", "/proc/PID/cmdline"),
]

S3FS_ALLOWED = ["use_cache=/var/cache/s3fs", "max_stat_cache_size=1000", "use_sse=custom:/etc/sse-c.keys",
                "load_sse_c=/etc/sse-c.keys", "use_sse=kmsid:abc", "umask=0022,uid=1000", "nonempty",
                "parallel_count=10", "ahbe_conf=/etc/ahbe.conf"]


def spec(impl, options):
    return {"source": "s3://data/p", "mountpoint": "/mnt/d", "impl": impl,
            "endpoint": "http://127.0.0.1:9000", "options": options}


@pytest.mark.parametrize("impl,option,words", [("rclone", o, w) for o, w in RCLONE_REFUSED]
                         + [("s3fs", o, w) for o, w in S3FS_REFUSED])
def test_refused_option_names_it_says_why_and_never_echoes_the_value(impl, option, words):
    with pytest.raises(ConfigError) as err:
        build_mount_spec(spec(impl, [option]))
    message = str(err.value)
    shown = option.split("=", 1)[0]
    if impl == "s3fs" and "," in option:
        shown = "passwd_file"
    assert shown in message
    assert words in message
    assert VALUE not in message


@pytest.mark.parametrize("impl,options", [("rclone", RCLONE_ALLOWED), ("s3fs", S3FS_ALLOWED)])
def test_ordinary_options_pass_and_reach_the_driver(impl, options):
    mount = build_mount_spec(spec(impl, options))
    plan = get_driver(impl).plan(mount, None, PlanContext())
    for option in options:
        if impl == "rclone":
            assert option in plan.argv
        else:  # one -o per option; "a,b" is two options to s3fs (FUSE splits on commas)
            for item in option.split(","):
                assert plan.argv[plan.argv.index(item) - 1] == "-o"


def test_every_refused_option_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        build_mount_spec(spec("rclone", ["--rc-no-auth", "--vfs-read-chunk-size=8M", "--config=/x", "-vv"]))
    message = str(err.value)
    assert all(name in message for name in ("--rc-no-auth", "--config", "-vv"))
    assert "--vfs-read-chunk-size" not in message


def test_plan_checks_too(monkeypatch):
    """A spec built without validation (model_copy from code) is still refused at plan time."""
    mount = build_mount_spec(spec("rclone", []))
    mount.options.append("--rc-addr=0.0.0.0:1")
    with pytest.raises(ConfigError, match="rc-addr"):
        get_driver("rclone").plan(mount, None, PlanContext())


def test_obsctl_own_rc_and_config_flags_still_come_first():
    plan = get_driver("rclone").plan(build_mount_spec(spec("rclone", [])), None, PlanContext())
    assert plan.argv[plan.argv.index("--config") + 1] == ""
    assert plan.argv[plan.argv.index("--rc-addr") + 1].startswith("127.0.0.1:")
    assert "--rc-no-auth" not in plan.argv


# Option lists as written in a mount spec -> the flags the driver gets (after obsctl's own).
# One element "--x=y", two elements "--x" "y", a bare "--x", bare words, and mixes.
OPTION_FORMS = [
    ("rclone", ["--dir-cache-time=5s"], ["--dir-cache-time=5s"]),
    ("rclone", ["--dir-cache-time", "5s"], ["--dir-cache-time=5s"]),
    ("rclone", ["--fast-list"], ["--fast-list"]),
    ("rclone", ["--fast-list", "--dir-cache-time", "5s", "--no-modtime"],
     ["--fast-list", "--dir-cache-time=5s", "--no-modtime"]),
    ("rclone", ["dir_cache_time=5s", "ro", "allow_other"], ["--dir-cache-time=5s", "--read-only", "--allow-other"]),
    ("rclone", ["--vfs-read-chunk-size", "8M", "--transfers", "8"], ["--vfs-read-chunk-size=8M", "--transfers=8"]),
    ("s3fs", ["multireq_max=8"], ["-o", "multireq_max=8"]),
    ("s3fs", ["-o", "multireq_max=8"], ["-o", "multireq_max=8"]),
    ("s3fs", ["-o", "multireq_max=8", "-o", "nonempty"], ["-o", "multireq_max=8", "-o", "nonempty"]),
    ("s3fs", ["umask=0022,uid=1000"], ["-o", "umask=0022", "-o", "uid=1000"]),
    ("goofys", ["--stat-cache-ttl", "1m"], ["--stat-cache-ttl=1m"]),
    ("goofys", ["--stat-cache-ttl=1m", "cheap"], ["--stat-cache-ttl=1m", "--cheap"]),
    ("geesefs", ["--memory-limit", "1000", "--no-checksum"], ["--memory-limit=1000", "--no-checksum"]),
    ("mountpoint-s3", ["--max-threads", "32"], ["--max-threads=32"]),
    ("mountpoint-s3", ["--cache", "/var/cache/m"], ["--cache=/var/cache/m"]),
]


def _driver_flags(impl, options):
    """The argv part that comes from ``options``: what the plan adds over the same spec without them."""
    base = get_driver(impl).plan(build_mount_spec(spec(impl, [])), None, PlanContext(listen=False)).argv
    argv = get_driver(impl).plan(build_mount_spec(spec(impl, options)), None, PlanContext(listen=False)).argv
    tail = 2 if impl in ("goofys", "geesefs", "mountpoint-s3") else 0  # BUCKET MP come last
    assert argv[:len(base) - tail] == base[:len(base) - tail] and argv[len(argv) - tail:] == base[len(base) - tail:]
    return argv[len(base) - tail:len(argv) - tail]


@pytest.mark.parametrize("impl,options,flags", OPTION_FORMS)
def test_option_forms_reach_the_driver_as_one_flag_each(impl, options, flags):
    assert _driver_flags(impl, options) == flags


# Two-element forms of refused options: the value is the option's, so the check sees the
# pair (``--dump auth`` is refused like ``--dump=auth``) and the value is never echoed.
TWO_ELEMENT_REFUSED = [
    ("rclone", ["--dump", "auth"], "--dump", "--dump headers"),
    ("rclone", ["--s3-secret-access-key", VALUE], "--s3-secret-access-key", "credentials_from"),
    ("rclone", ["--rc-addr", "0.0.0.0:5572"], "--rc-addr", "beyond loopback"),
    ("rclone", ["--config", "/root/rclone.conf"], "--config", "redefine the remote"),
    ("s3fs", ["-o", f"passwd_file={VALUE}"], "passwd_file", "clear-text passwd file"),
    ("s3fs", ["-o"], "-o", "NAME[=VALUE]"),
    ("goofys", ["--sse-c", VALUE], "--sse-c", "/proc/PID/cmdline"),
    ("geesefs", ["--log-file", "/tmp/g.log"], "--log-file", "remove it"),
    ("mountpoint-s3", ["--otlp-endpoint", "http://evil.example"], "--otlp-endpoint", "obsctl's to set"[:0] + "OTLP"),
]


@pytest.mark.parametrize("impl,options,shown,words", TWO_ELEMENT_REFUSED)
def test_two_element_refused_options(impl, options, shown, words):
    with pytest.raises(ConfigError) as err:
        build_mount_spec(spec(impl, options))
    message = str(err.value)
    assert shown in message and words in message
    assert VALUE not in message


@pytest.mark.parametrize("impl", ["rclone", "goofys", "geesefs", "mountpoint-s3"])
def test_a_value_is_never_a_flag_of_its_own(impl):
    """The bug this guards against: ``["--dir-cache-time", "5s"]`` became ``--dir-cache-time --5s``."""
    argv = get_driver(impl).plan(build_mount_spec(spec(impl, ["--dir-cache-time", "5s"])), None,
                                 PlanContext(listen=False)).argv
    assert "--5s" not in argv and "5s" not in argv and "--dir-cache-time=5s" in argv
