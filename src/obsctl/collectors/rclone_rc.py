"""Errors and status from rclone's remote-control API (``--rc``).

Source: ``rclone mount ... --rc --rc-addr 127.0.0.1:PORT --rc-no-auth
--rc-enable-metrics`` (rclone 1.60). Real answers are in
tests/fixtures/rclone/*/{core_stats.json,vfs_stats.json,metrics.txt}.

Each :meth:`RcloneRcCollector.poll` makes up to three requests, each with a
1 s timeout:

* ``POST core/stats`` -> JSON object, cumulative since rclone started::

      {"bytes": 1248576, "checks": 0, "deletedDirs": 0, "deletes": 0,
       "elapsedTime": 6.36, "errors": 0, "eta": 0, "fatalError": false,
       "renames": 0, "retryError": false, "speed": 207976.3,
       "totalBytes": 1248576, "totalChecks": 0, "totalTransfers": 2,
       "transferTime": 0, "transfers": 2}
      (+ "lastError": "BadRequest: ... status code: 400 ..." after an error,
       + "transferring": [...] while transfers run)

  increase of ``errors`` (count of failed transfers; a failed directory
  listing is NOT counted there, see the auth403 fixture: 5 x 403, errors 0)
  -> ``add_error("rclone_error", delta)``. Kept in :attr:`last_core_stats`.
* ``POST vfs/stats`` -> ``{"fs": ..., "inUse": N, "metadataCache":
  {"dirs": N, "files": N}, "opt": {...}}`` plus ``diskCache`` {bytesUsed,
  erroredFiles, files, outOfSpace, uploadsInProgress, uploadsQueued ...}
  when ``--vfs-cache-mode`` is not ``off``. No cache hit/miss counts exist
  in rclone 1.60. Kept in :attr:`last_vfs_stats` (for ``obsctl status``),
  nothing recorded.
* ``GET /metrics`` (only with ``metrics=True``; needs
  ``--rc-enable-metrics``) -> Prometheus text. Increase of
  ``rclone_http_status_code{code="403",host="",method="GET"} 5`` summed over
  ``host`` for every ``code`` >= 400 -> ``add_error("http_403", delta)``.
  (Counts every HTTP answer rclone's S3 backend got, retries included.)

A counter that goes down (the driver restarted with a fresh count) restarts
the delta from 0. With ``count_initial=False`` the first poll only sets the
baseline (for ``obsctl sidecar`` on a driver that ran before).

``base_url`` is ``http://127.0.0.1:5572`` or a Unix socket path (absolute
path or ``unix:///path``; rclone >= 1.61 can serve rc on a socket, 1.60 binds
TCP only). Never raises out of :meth:`poll`: an unreachable rc (driver
starting, restarting, hung) is logged at debug level and skipped.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from obsctl.collectors import PollingCollector
from obsctl.instruments import Instruments

log = logging.getLogger(__name__)

_STATUS_LINE = re.compile(r'^rclone_http_status_code\{([^}]*)\}\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_http_status_codes(text: str) -> dict[tuple[str, str], float]:
    """``{(code, method): value}`` from rclone's /metrics text (summed over host)."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _STATUS_LINE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match.group(1)))
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        key = (labels.get("code", ""), labels.get("method", ""))
        out[key] = out.get(key, 0.0) + value
    return out


def rc_request(base_url: str, path: str, auth: tuple[str, str] | None = None, timeout: float = 1.0,
               method: str = "POST", body: dict[str, Any] | None = None) -> tuple[int, str]:
    """One call to rclone's rc API with the standard library's http.client.

    Args:
        base_url: ``http://HOST:PORT`` of ``--rc-addr``, or ``unix:///path`` /
            ``/path`` of a Unix socket (rclone releases after 1.60).
        path: ``core/stats``, ``vfs/stats``, ``operations/list``, ``metrics`` ...
        auth: ``(user, password)`` for ``--rc-user/--rc-pass`` (HTTP basic).
        body: JSON body for POST (rc methods take their parameters there).

    Returns:
        ``(HTTP status, body text)``.

    Raises:
        OSError, http.client.HTTPException: the rc did not answer.
    """
    if base_url.startswith(("unix://", "/")):
        conn: http.client.HTTPConnection = _UnixHTTPConnection(base_url.removeprefix("unix://"), timeout)
    else:
        parts = urlsplit(base_url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % auth).encode()).decode("ascii")
    try:
        conn.request(method, "/" + path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class RcloneRcCollector(PollingCollector):
    """Polls rclone's rc API (see module doc).

    Args:
        instruments: where to record.
        base_url: ``http://HOST:PORT`` of ``--rc-addr`` or a Unix socket path.
        metrics: also read ``/metrics`` (needs ``--rc-enable-metrics``).
        timeout: seconds per request.
        auth: ``(user, password)`` when the rc runs with ``--rc-user/--rc-pass``.
        count_initial: count what the first poll finds (True) or use it as
            the baseline (False).

    Attributes:
        last_core_stats: last ``core/stats`` answer (dict) or None.
        last_vfs_stats: last ``vfs/stats`` answer (dict) or None.
        last_http_status: last ``{(code, method): count}`` from /metrics.
        reachable: whether the last poll reached the rc at all.
    """

    def __init__(
        self,
        instruments: Instruments,
        base_url: str,
        metrics: bool = True,
        timeout: float = 1.0,
        auth: tuple[str, str] | None = None,
        count_initial: bool = True,
    ) -> None:
        super().__init__(instruments)
        self.metrics = metrics
        self.timeout = timeout
        self.auth = auth
        self.count_initial = count_initial
        self.base_url = base_url.rstrip("/")
        self.last_core_stats: dict[str, Any] | None = None
        self.last_vfs_stats: dict[str, Any] | None = None
        self.last_http_status: dict[tuple[str, str], float] = {}
        self.reachable = False
        self._prev_errors: int | None = None
        self._prev_status: dict[tuple[str, str], float] | None = None

    def status(self) -> dict[str, Any]:
        """``driver_stats``: the last ``core/stats`` / ``vfs/stats`` answers, as rclone gave them."""
        stats = {"last_core_stats": self.last_core_stats, "last_vfs_stats": self.last_vfs_stats}
        return {"driver_stats": {name: value for name, value in stats.items() if value is not None}}

    # -- transport ---------------------------------------------------------
    def _request(self, method: str, path: str) -> str:
        status, body = rc_request(self.base_url, path, auth=self.auth, timeout=self.timeout,
                                  method=method, body={} if method == "POST" else None)
        if status >= 400:
            raise OSError("rc %s answered %d" % (path, status))
        return body

    def _get_json(self, path: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._request("POST", path))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            log.debug("rclone rc %s: %s", path, exc)
            return None
        return data if isinstance(data, dict) else None

    # -- polling -----------------------------------------------------------
    def _poll(self) -> None:
        """Read core/stats, vfs/stats and (optionally) /metrics once."""
        core = self._get_json("core/stats")
        self.reachable = core is not None
        if core is not None:
            self.last_core_stats = core
            errors = core.get("errors")
            if isinstance(errors, int) and not isinstance(errors, bool):
                prev = self._prev_errors
                self._prev_errors = errors
                if prev is None:
                    delta = errors if self.count_initial else 0
                else:
                    delta = errors - prev if errors >= prev else errors
                self.instruments.add_error("rclone_error", delta)
        vfs = self._get_json("vfs/stats")
        if vfs is not None:
            self.last_vfs_stats = vfs
        if self.metrics:
            try:
                text = self._request("GET", "metrics")
            except (OSError, ValueError, http.client.HTTPException) as exc:
                log.debug("rclone rc metrics: %s", exc)
                return
            self._on_status(parse_http_status_codes(text))

    def _on_status(self, status: dict[tuple[str, str], float]) -> None:
        self.last_http_status = status
        prev = self._prev_status
        self._prev_status = status
        for (code, _method), value in status.items():
            if not code.isdigit() or int(code) < 400:
                continue
            if prev is None:
                delta = value if self.count_initial else 0
            else:
                before = prev.get((code, _method), 0.0)
                delta = value - before if value >= before else value
            self.instruments.add_error("http_%s" % code, int(delta))
