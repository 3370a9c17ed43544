"""Mounts on a host without systemd: the engine's ``service_manager: none`` requests.

Hosts without systemd as PID 1 (containers, WSL) run each mount as
``obsctl mount --config /etc/obsctl/mounts/NAME.toml`` in the background
(its own session, log in ``/var/log/obsctl-mount-NAME.log``), from the spec
the engine writes for systemd hosts: the same request
(:class:`obsctl.engine.Request`), the same validation and spec file
(:func:`obsctl.engine.desired_spec`, :meth:`obsctl.engine.Engine.sync_files`),
so every key (read_only, allow_other, options, cache_mode, profile, command,
telemetry_config, ...) means what it means under systemd. Reached through
``obsctl systemd apply --json`` with ``"service_manager": "none"`` (the
fuse_mount module's O(service_manager)).

Differences from systemd hosts, by necessity:

* credentials are not stored (no systemd to decrypt them at start): they go,
  in the driver's credential shape (juicefs's META_PASSWORD too), from the
  request (stdin) into the environment of the started ``obsctl
  mount`` only, never its argv, never a file; the spec says
  ``credentials_from = "env"``. So a changed credential cannot be seen on a
  running mount: use state ``remounted`` to apply one;
* nothing restarts a mount after a reboot or a crash of obsctl itself (the
  result's warnings say so).

States: ``mounted`` (spec written; started unless an obsctl mount with the same
spec runs there; a changed spec restarts it; a stale mount is detached
first), ``remounted`` (as mounted, always restarted), ``present`` (spec only),
``unmounted`` (``obsctl unmount``; spec kept), ``absent`` (unmounted, spec
removed). A mount that does not come up within its ready timeout is stopped,
the files of this run are restored, and :class:`obsctl.engine.EngineError`
carries the last lines of its log.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import msgspec

from obsctl import engine, statefile
from obsctl.config import ConfigError
from obsctl.engine import EngineError
from obsctl.paths import runtime_dir

#: Lines of the mount's log returned when it failed.
LOG_TAIL_LINES = 20
#: Seconds ``obsctl unmount`` may take (its own default, cli.py ``--timeout``).
UNMOUNT_TIMEOUT = 30
#: Seconds after the spec's ready timeout before a mount that has not appeared is given up
#: (the driver's own start; the systemd units allow 90 s for 30 s of ready timeout).
START_MARGIN_SECONDS = 15.0
WARNING = ("no systemd on this host: {path} runs under obsctl mount in the background; "
           "it does not survive a reboot and nothing restarts it if obsctl itself dies")


class Background(engine.Engine):
    """:class:`obsctl.engine.Engine` for ``service_manager: none``: same files, ``obsctl mount``
    started in the background instead of a unit. ``spawn(argv, env, log_path) -> Popen`` starts it
    (tests may pass their own); the other arguments are the engine's."""

    def __init__(self, req: engine.Request, spawn: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        self.credentials = req.credentials
        #: The request's credentials in the driver's shape (:func:`obsctl.engine.request_credentials`), set by apply.
        self.driver_credentials: Any = None
        # The files are those of a mount whose credentials come from its environment.
        files_req = msgspec.structs.replace(
            req, credentials=None, health_timer=None, install_units=False,
            credentials_from="env" if req.credentials is not None else req.credentials_from)
        super().__init__(files_req, **kwargs)
        self.spawn = spawn or _spawn

    @property
    def log_path(self) -> Path:
        return self.root / "var/log" / f"obsctl-mount-{self.req.name}.log"

    def apply(self) -> dict[str, Any]:
        """Converge; returns the engine's result shape (``unit`` and ``unit_state`` describe the
        background process: ``active_state`` active when obsctl supervises the mount).

        Raises:
            ConfigError: invalid request (nothing was changed).
            EngineError: a step failed; a failed start restored this run's files.
        """
        req, layout = self.req, self.layout
        errors = engine._check_request(msgspec.structs.replace(req, credentials=self.credentials))
        if errors:
            raise ConfigError("; ".join(errors))
        spec = engine.desired_spec(req, layout) if req.state in ("mounted", "present", "remounted") else None
        if spec is not None:  # the driver's credential shape, checked before anything is written
            self.driver_credentials = engine.request_credentials(
                msgspec.structs.replace(req, credentials=self.credentials), spec["impl"])
        mountpoint = self._mountpoint()
        before_mount = self._mount(mountpoint)
        engine.check_mountpoint(req, mountpoint, before_mount)
        ours_before = self._ours(mountpoint)
        if req.state in ("mounted", "remounted"):
            self._mounted(before_mount, ours_before, mountpoint, spec, force=req.state == "remounted")
        elif req.state == "present":
            self.sync_files(True, spec)
        else:
            self._stop(before_mount, ours_before, mountpoint)
            if req.state == "absent":
                self.sync_files(False, None)
        if req.state in ("mounted", "remounted", "present"):
            self._warn(WARNING.format(path=mountpoint))
        after_mount = before_mount if self.check_mode else self._mount(mountpoint)
        ours_after = ours_before if self.check_mode else self._ours(mountpoint)
        return {
            "changed": self.changed,
            "name": req.name,
            "state": req.state,
            "unit": None,
            "config_path": layout.host(layout.spec),
            "credential_path": None,
            "log_path": layout.host(self.log_path),
            "actions": self.actions,
            "mount": {k: after_mount.get(k) for k in ("mountpoint", "source", "fstype", "health")},
            "unit_state": {"active_state": "active" if ours_after else "inactive", "sub_state": "background",
                           "enabled": False},
            "diff": self.diff,
            "warnings": self.warnings,
        }

    # -- facts ----------------------------------------------------------------

    def _ours(self, mountpoint: str | None) -> bool:
        """Whether a live ``obsctl mount`` supervises ``mountpoint`` (its state file)."""
        if not mountpoint:
            return False
        state = statefile.state_for(runtime_dir(), mountpoint)
        return bool(state) and state.get("state") not in ("dead", "observing")

    # -- states -------------------------------------------------------------

    def _mounted(self, before_mount, ours: bool, mountpoint: str, spec, force: bool) -> None:
        files_changed = self.sync_files(True, spec)
        health = before_mount["health"]
        if health == "ok" and not ours:
            raise EngineError(f"{mountpoint} is already mounted by something else ({before_mount['fstype']}, "
                              f"{before_mount['source']}), not by obsctl: not taking it over")
        if ours and health == "ok" and not files_changed and not force:
            return
        if ours:
            self._unmount(mountpoint, "stop the running obsctl mount of")
        elif health == "stale":
            self._act(f"lazy unmount of the stale mount at {mountpoint} (transport endpoint is not connected)")
            if not self.check_mode:
                engine.lazy_unmount(self.run, mountpoint)
        self._ensure_mountpoint(mountpoint)
        self._act(f"start obsctl mount --config {self.layout.host(self.layout.spec)} in the background")
        if not self.check_mode:
            self._start_background(mountpoint, spec)

    def _stop(self, before_mount, ours: bool, mountpoint: str | None) -> None:
        if not mountpoint:
            return
        if ours:
            self._unmount(mountpoint, "stop the obsctl mount of")
        elif before_mount["fuse"] and before_mount["health"] == "stale":
            self._act(f"lazy unmount of the stale mount at {mountpoint}")
            if not self.check_mode:
                engine.lazy_unmount(self.run, mountpoint)

    def _unmount(self, mountpoint: str, what: str) -> None:
        self._act(f"{what} {mountpoint} (obsctl unmount)")
        if self.check_mode:
            return
        rc, out, err = self.run([engine.obsctl_bin(), "unmount", "--timeout", str(UNMOUNT_TIMEOUT), mountpoint])
        if rc != 0:
            raise EngineError(f"obsctl unmount {mountpoint} failed (rc={rc}): {(err or out).strip()}")

    def _start_background(self, mountpoint: str, spec: dict[str, Any]) -> None:
        # The caller's environment, without its log level (the module quiets its own obsctl
        # call) or a systemd notify socket; the request's credentials replace any of its own.
        env = {k: v for k, v in os.environ.items() if k not in ("OBSCTL_LOG_LEVEL", "NOTIFY_SOCKET")}
        if self.driver_credentials is not None:
            for key in engine.CREDENTIAL_ENV + ("AWS_PROFILE",):
                env.pop(key, None)
            env.update(self.driver_credentials.as_env())
        argv = [engine.obsctl_bin(), "mount", "--config", str(self.layout.spec)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = self.spawn(argv, env, self.log_path)
        timeout = float(spec.get("ready_timeout_seconds") or 30) + START_MARGIN_SECONDS
        deadline = time.monotonic() + timeout
        health = "missing"
        while time.monotonic() < deadline:
            health = self._mount(mountpoint)["health"]
            if health == "ok" and self._ours(mountpoint):
                return
            if proc.poll() is not None:
                break
            self.sleep(0.25)
        code = proc.poll()
        if code is None:
            # Not up in time: stop it (SIGTERM: obsctl unmounts and stops its driver).
            proc.terminate()
            try:
                proc.wait(UNMOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        problem = (f"obsctl mount exited with status {code}" if code is not None
                   else f"{mountpoint} did not come up within {timeout:g} s (mount {health})")
        errors = self.tx.undo()
        self.changed = bool(errors)
        tail = self.log_tail()
        msg = f"{problem}; restored the files of this run"
        if errors:
            msg += f" (restore problems: {'; '.join(errors)})"
        msg += f". Last lines of {self.layout.host(self.log_path)}:\n" + ("\n".join(tail) or "(none)")
        raise EngineError(msg, journal=tail, rolled_back=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The last ``lines`` lines of the mount's log (obsctl's log: no secret in it)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (it outlives the caller), stdin from /dev/null, stdout and
    stderr appended to ``log_path`` (0640), no other inherited descriptor (the module's pipes stay free)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, cwd="/")
    finally:
        os.close(fd)


def apply(req: engine.Request, check_mode: bool = False, **kwargs: Any) -> dict[str, Any]:
    """``Background(req, check_mode=check_mode, **kwargs).apply()``: see :class:`Background`."""
    return Background(req, check_mode=check_mode, **kwargs).apply()
