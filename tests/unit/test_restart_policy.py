"""One owner of restarts per way of running (issue 17).

* the unit template, as ``obsctl systemd install`` renders it: systemd owns
  restarts (Restart=on-failure within StartLimitBurst= / StartLimitIntervalSec=),
  a permanent error's exit status is RestartPreventExitStatus=, and
  ``systemctl reload`` sends SIGHUP;
* obsctl recognises a permanent error in what rclone and s3fs really print
  (the captured logs under tests/fixtures/), and not in a passing one;
* the health timer's check leaves a unit that failed for a permanent reason
  alone and starts again one that failed for a passing reason.

The foreground budget runs for real in tests/integration/test_restart_budget.py.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from obsctl import engine, systemd_units
from obsctl.errors import EXIT_FAILED, EXIT_PERMANENT
from obsctl.supervisor import permanent_error, restart_owner

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _unit() -> configparser.ConfigParser:
    pytest.importorskip("jinja2")
    text = engine.render("obsctl-mount@.service.j2", obsctl_bin="/opt/obsctl/bin/obsctl")
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # unit keys are case-sensitive
    parser.read_string(text)
    return parser


def test_unit_owns_the_restart_budget_and_reloads_with_sighup():
    unit = _unit()
    assert unit["Service"]["Type"] == "notify"  # NOTIFY_SOCKET set: obsctl leaves restarts to systemd
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Service"]["RestartPreventExitStatus"] == str(EXIT_PERMANENT)
    assert int(unit["Unit"]["StartLimitBurst"]) == 5 and int(unit["Unit"]["StartLimitIntervalSec"]) == 300
    assert unit["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_restart_owner_follows_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert restart_owner() == "obsctl"
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    assert restart_owner() == "systemd"


def test_permanent_errors_in_what_the_drivers_print():
    rclone = [line for line in (FIXTURES / "rclone/auth403/rclone.log").read_text().splitlines()
              if '"level":"error"' in line]
    s3fs = [line for line in (FIXTURES / "s3fs/auth403/s3fs.log").read_text().splitlines() if "[ERR]" in line]
    assert rclone and all(permanent_error(line) for line in rclone)
    assert any(permanent_error(line) == "HTTP response code 403" for line in s3fs)
    # passing failures are retried
    for line in ("CURLE_COULDNT_CONNECT", "connection refused", "rclone was killed by SIGKILL",
                 "HTTP response code 503", "s3fs exited with status 1: s3fs logged no error"):
        assert permanent_error(line) is None, line


class Systemctl:
    """Records the systemctl calls of check() and answers as a unit in ``state`` whose last
    run exited ``status`` (a recorder for the command line, not the code under test)."""

    def __init__(self, state: str, status: int) -> None:
        self.state, self.status, self.calls = state, status, []

    def __call__(self, argv, **_kw):
        self.calls.append(argv[1:])
        if argv[1] == "show" and "--property=ExecMainStatus" in argv:
            return 0, f"ExecMainStatus={self.status}\n", ""
        if argv[1] == "show":
            return 0, f"LoadState=loaded\nActiveState={self.state}\nSubState={self.state}\nMainPID=0\n", ""
        if argv[1] == "is-enabled":
            return 0, "enabled\n", ""
        return 0, "", ""


@pytest.mark.parametrize("status, restarted", [(EXIT_PERMANENT, False), (EXIT_FAILED, True)])
def test_timer_leaves_a_permanent_failure_alone(tmp_path, status, restarted):
    spec = engine.Layout("data", tmp_path).spec
    spec.parent.mkdir(parents=True)
    spec.write_text(f'source = "s3://data"\nmountpoint = "{tmp_path / "mnt"}"\n')
    systemctl = Systemctl("failed", status)
    said: list[str] = []
    rc = systemd_units.check("data", root=tmp_path, run=systemctl, out=said.append, settle_seconds=0,
                             sleep=lambda _s: None)
    started = ["reset-failed", "obsctl-mount@data.service"] in systemctl.calls
    assert started is restarted, systemctl.calls
    if not restarted:
        assert rc == EXIT_FAILED and "permanent" in said[-1], said
