"""node_restart: telemetry_config restarts the (stand-in) node under systemd.

The tests run in file order: first what converge and idempotence left, then
the roll-back, which runs converge.yml once more with a bind address whose
port another listener holds."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "tests" / "fixtures" / "node" / "rust-dkg-engine-config.toml"
SCENARIO = Path(__file__).resolve().parents[1]
CONFIG = "/etc/rust-dkg-engine/config.toml"
UNIT = "rust-dkg-engine.service"
#: what the fixture (the installer's file) has in [telemetry.metrics]
FIXTURE_METRICS = 'enabled = false\nbind_address = "127.0.0.1:9464"\n'
HOLDER = "node-restart-port-holder"
HOLDER_PORT_FILE = "/run/node-restart-holder.port"
#: another program that listens on a port and answers nothing: each
#: connection is accepted and closed
HOLDER_CODE = f"""
import os, socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
with open("{HOLDER_PORT_FILE}.tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.rename("{HOLDER_PORT_FILE}.tmp", "{HOLDER_PORT_FILE}")
while True:
    s.accept()[0].close()
"""


def facts(host):
    return json.loads(host.file("/etc/ansible/facts.d/node_restart.fact").content_string)


def unit_property(host, name):
    return host.check_output(f"systemctl show --timestamp=unix -P {name} {UNIT}").strip()


def journal(host):
    return host.check_output(f"journalctl --no-pager -o cat -u {UNIT}")


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.status, resp.read().decode()


def expected_file(port):
    """The installer's file with only [telemetry.metrics] changed."""
    text = FIXTURE.read_text()
    assert text.endswith(FIXTURE_METRICS)
    return text.replace(FIXTURE_METRICS, f'enabled = true\nbind_address = "127.0.0.1:{port}"\n')


def test_the_file_has_metrics_on_and_every_other_byte_kept(host):
    f = host.file(CONFIG)
    assert f.content_string == expected_file(facts(host)["metrics_port"])
    assert (f.user, f.group, f.mode) == ("root", "rustdkg", 0o640)


def test_the_unit_was_restarted_after_the_file_changed_and_is_active(host):
    assert unit_property(host, "ActiveState") == "active"
    assert unit_property(host, "InvocationID") != facts(host)["prepare_invocation_id"]
    started = int(unit_property(host, "ExecMainStartTimestamp").lstrip("@"))
    written = int(host.check_output(f"stat -c %Y {CONFIG}"))
    assert started >= written, "the running node started before its file was written"


def test_converge_and_idempotence_restarted_it_once(host):
    # one start in prepare (metrics off), one restart in converge, none in
    # idempotence (converge.yml also asserts: restarted iff the file changed)
    starts = [line for line in journal(host).splitlines() if line.startswith("Configuration loaded successfully")]
    assert len(starts) == 2, journal(host)


def test_metrics_answer_on_the_bind_address(host):
    status, body = scrape(facts(host)["metrics_port"])
    assert status == 200
    assert "# TYPE node_command_total counter" in body
    assert 'node_command_total{command="HandleGetRequest",status="completed"}' in body


def test_a_node_that_cannot_serve_metrics_gets_its_old_file_back(host):
    """The roll-back for real: the new bind address's port is held by another
    listener, so the node starts, cannot listen there (it only warns, as
    rust-dkg-engine's src/logger/mod.rs:82-86) and /metrics never answers from
    it; the role must put the old file back, restart the unit and fail."""
    port = facts(host)["metrics_port"]
    before = host.file(CONFIG).content
    invocation_before = unit_property(host, "InvocationID")
    host.run(f"systemctl stop {HOLDER}; rm -f {HOLDER_PORT_FILE}")
    host.check_output(f"systemd-run --unit={HOLDER} --property=Type=exec /usr/bin/python3 -c {shlex.quote(HOLDER_CODE)}")
    try:
        deadline = time.monotonic() + 10
        while not host.file(HOLDER_PORT_FILE).exists and time.monotonic() < deadline:
            time.sleep(0.1)
        held = int(host.file(HOLDER_PORT_FILE).content_string)

        playbook = shutil.which("ansible-playbook") or str(Path(sys.executable).parent / "ansible-playbook")
        start = time.monotonic()
        proc = subprocess.run(
            [playbook, "-i", os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"]), str(SCENARIO / "converge.yml"),
             "-e", f"telemetry_config_node_metrics_bind_address=127.0.0.1:{held}"],
            capture_output=True, text=True, timeout=900, check=False)
        took = time.monotonic() - start
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out
        message = " ".join(out.split())
        assert (f"{UNIT} did not come back with the new {CONFIG} "
                f"(no answer from http://127.0.0.1:{held}/metrics") in message, out
        assert "The old file was put back from" in message and "and the unit restarted again;" in message, out
        assert "which failed too" not in message, out

        f = host.file(CONFIG)
        assert f.content == before
        assert (f.user, f.group, f.mode) == ("root", "rustdkg", 0o640)
        assert unit_property(host, "ActiveState") == "active"
        assert unit_property(host, "InvocationID") != invocation_before
        log = journal(host)
        # the node did run with the new file and could not listen there
        assert f"Failed to initialize Prometheus metrics exporter bind_address=127.0.0.1:{held}" in log, log
        # and runs again with the old one: /metrics back on the old address
        status, body = scrape(port)
        assert status == 200 and "node_command_total" in body
        print(f"roll-back run took {took:.0f} s")
    finally:
        host.run(f"systemctl stop {HOLDER}")


@pytest.mark.parametrize("key", ["traces", "metrics.exporter"])
def test_the_standin_refuses_an_unknown_telemetry_key(host, key):
    """What makes the stand-in a fair test of the profile: like the node
    (src/logger/config.rs, deny_unknown_fields) it does not start on a
    [telemetry] key it does not know."""
    toml = FIXTURE.read_text() + ("\n[telemetry.traces]\nenabled = true\n" if key == "traces"
                                  else 'exporter = "otlp"\n')
    path = f"/tmp/node-restart-unknown-{key}.toml"
    host.check_output(f"printf %s {shlex.quote(toml)} > {path}")
    result = host.run(f"runuser -u rustdkg -- /usr/bin/python3 /opt/rust-dkg-engine-standin/support/standin_node.py "
                      f"--config {path}")
    assert result.rc == 1, result.stdout + result.stderr
    assert f"unknown field `{key.split('.')[-1]}`" in result.stderr
