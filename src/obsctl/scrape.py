"""One Prometheus scrape endpoint per host for every obsctl mount (DESIGN section 3).

Every mount on a host reads the same ``/etc/obsctl/telemetry.toml``, so every
mount's ``[telemetry.metrics] bind_address`` is the same address; only one
process can listen on it. The design, like node_exporter serving a host:

* **publish**: every obsctl process (``obsctl mount`` or ``obsctl sidecar``)
  writes its own exposition, at every poll of its observer (2 s by default),
  to ``RUNTIME_DIR/metrics/<state key>.prom`` (:func:`publish_path`: the same
  key as the mount's state file, :func:`obsctl.statefile.state_file_path`),
  atomically (:func:`obsctl.fileutil.atomic_write`), and removes it on exit.
  The first line is ``# obsctl-publisher pid=PID start=TICKS ... bind=HOST:PORT``:
  who wrote it, and for which endpoint (mounts whose telemetry files name
  different addresses each have their own endpoint and never serve each
  other's series);
* **serve**: whichever obsctl process holds the port serves its own series,
  collected at scrape time, plus every other live publisher's file, parsed
  with prometheus_client's text parser and merged family by family, so each
  metric name has one ``# HELP`` / ``# TYPE`` block. A file whose publisher
  (pid and start time, :func:`obsctl.procutil.same_process`) is gone is
  skipped and deleted (a killed obsctl cannot remove its own);
* **retry**: the others try to bind again at each poll, quietly, so when the
  holder exits, another mount's process serves the endpoint within a poll.

No duplicate series: every series gets a ``mountpoint`` label where it has
none (``obsctl_fs_ops_total``, ``obsctl_errors_total``, ``target_info`` ...
carry only bucket and impl, or resource attributes: two mounts of one bucket
would otherwise collide on one endpoint; over OTLP the resource tells them
apart). A peer's series are at most one poll interval old; the holder's own
are fresh.

A port that cannot be bound never stops a mount: ``EADDRINUSE`` while a live
obsctl publisher serves is the normal case (one INFO line); any other failure,
or a port held by something that is not obsctl for
:data:`FOREIGN_HOLDER_POLLS` polls, is one WARNING line per process.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import threading
from typing import Any, Iterable, Iterator

from obsctl import statefile
from obsctl.fileutil import atomic_write
from obsctl.procutil import same_process, start_time

log = logging.getLogger(__name__)

#: Polls in a row with the port in use and no live obsctl publisher serving it
#: before the one warning that something else holds it (obsctl's choice: 3 polls,
#: 6 s at the default interval, longer than any obsctl start-up takes to bind).
FOREIGN_HOLDER_POLLS = 3
#: Subdirectory of the runtime directory where the mounts publish.
METRICS_SUBDIR = "metrics"
#: The first line of a published file.
HEADER = re.compile(
    r"^# obsctl-publisher pid=(\d+) start=(\d+|-) serving=([01])(?: failed=([01]))?(?: bind=(\S+))?$")

#: waitress settings of the endpoint (obsctl's choices, not waitress defaults):
#: 2 app threads (a scrape takes milliseconds; 2 lets a second scraper in),
#: at most 64 open connections (more wait in the listen backlog), a connection
#: idle for 10 s is closed (Prometheus' default scrape_timeout is 10 s), checked
#: every 2 s; poll() instead of select() so a descriptor above 1023 cannot break
#: the loop; no "Server: waitress" banner.
SERVER_SETTINGS: dict[str, Any] = {
    "threads": 2, "connection_limit": 64, "channel_timeout": 10, "cleanup_interval": 2,
    "asyncore_use_poll": True, "ident": "obsctl", "clear_untrusted_proxy_headers": True,
}


def metrics_dir(runtime_dir: str) -> str:
    """``RUNTIME_DIR/metrics``: where every mount of the host publishes."""
    return os.path.join(runtime_dir, METRICS_SUBDIR)


def publish_path(runtime_dir: str, mountpoint: str) -> str:
    """``RUNTIME_DIR/metrics/<key>.prom``, ``<key>`` being the mount's state-file name
    (:func:`obsctl.statefile.state_file_path`), so two mounts never share a file."""
    key = os.path.splitext(os.path.basename(statefile.state_file_path(runtime_dir, mountpoint)))[0]
    return os.path.join(metrics_dir(runtime_dir), key + ".prom")


def with_mountpoint(families: Iterable[Any], mountpoint: str) -> list[Any]:
    """``families`` (prometheus_client Metric objects) with ``mountpoint`` added to every
    sample that has no such label (the samples are copied, the families too)."""
    # start-up cost: prometheus_client loads only with a bind_address
    from prometheus_client.metrics_core import Metric

    out = []
    for family in families:
        copy = Metric(family.name, family.documentation, family.type, family.unit)
        copy.samples = [s if "mountpoint" in s.labels else s._replace(labels={**s.labels, "mountpoint": mountpoint})
                        for s in family.samples]
        out.append(copy)
    return out


def merge(groups: Iterable[Iterable[Any]]) -> list[Any]:
    """Merge metric families by (name, type): one family per name, samples concatenated in order,
    a sample whose (name, labels) was seen already dropped (the first publisher wins)."""
    # start-up cost: as above
    from prometheus_client.metrics_core import Metric

    merged: dict[tuple[str, str], Any] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for families in groups:
        for family in families:
            key = (family.name, family.type)
            target = merged.get(key)
            if target is None:
                target = merged[key] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                ident = (sample.name, tuple(sorted(sample.labels.items())))
                if ident in seen:
                    continue
                seen.add(ident)
                target.samples.append(sample)
    return list(merged.values())


def remove_publication(runtime_dir: str, mountpoint: str) -> None:
    """Delete the published file of the mount at ``mountpoint`` (a failed mount's last word), if any."""
    try:
        os.unlink(publish_path(runtime_dir, mountpoint))
    except OSError:
        pass


def read_peers(directory: str, exclude: str | None = None, remove_dead: bool = True,
               bind_address: str | None = None) -> tuple[list[list[Any]], bool]:
    """The families of every live publisher's file in ``directory`` but ``exclude`` (a path)
    whose endpoint is ``bind_address`` (None: any; a file without ``bind=`` matches any).

    Returns ``(groups, serving)``: one list of families per file, and whether a live
    publisher says it serves the endpoint. A file whose publisher is gone is deleted
    (``remove_dead``); an unreadable or unparsable file is skipped.
    """
    # start-up cost: as above
    from prometheus_client.parser import text_string_to_metric_families

    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return [], False
    groups: list[list[Any]] = []
    serving = False
    for name in names:
        path = os.path.join(directory, name)
        if not name.endswith(".prom") or path == exclude:
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            continue
        match = HEADER.match(text.partition("\n")[0])
        if match is None:
            continue
        pid, started = int(match.group(1)), match.group(2)
        if match.group(4) == "1":
            pass  # a failed mount's last word (mount_up 0): served until the mount is started again
        elif not same_process(pid, None if started == "-" else int(started)):
            if remove_dead:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            continue
        if bind_address is not None and match.group(5) not in (None, bind_address):
            continue  # another endpoint's mount: served there
        try:
            groups.append(list(text_string_to_metric_families(text)))
        except ValueError as exc:
            log.debug("skipping %s: %s", path, exc)
            continue
        serving = serving or match.group(3) == "1"
    return groups, serving


class _Families:
    """A prometheus_client collector that yields what ``families()`` returns."""

    def __init__(self, families: Any) -> None:
        self._families = families

    def collect(self) -> list[Any]:
        return self._families()


class HostEndpoint:
    """This process's part of the host's scrape endpoint (see the module doc).

    Args:
        bind_address: ``HOST:PORT`` of ``[telemetry.metrics] bind_address``.
        own_registry: the prometheus_client registry of this mount's
            PrometheusMetricReader (never served directly).
        mountpoint: the ``mountpoint`` label added where a series has none.
        path: where this mount publishes (:func:`publish_path`), or None
            (then it serves its own series only, and never publishes).

    Attributes:
        serving: True while this process holds the port.
        bind_error: the last bind failure's text, ``""`` while serving.
    """

    def __init__(self, bind_address: str, own_registry: Any, mountpoint: str, path: str | None) -> None:
        self.bind_address = bind_address
        self.own_registry = own_registry
        self.mountpoint = mountpoint
        self.path = path
        self.serving = False
        self.bind_error = ""
        self._server: Any = None
        self._collect_lock = threading.Lock()
        self._warned = False
        self._informed = False
        self._foreign_polls = 0
        self._closed = False
        self._start = start_time(os.getpid())

    # -- what is served / published ----------------------------------------------
    def own_families(self) -> list[Any]:
        """This mount's families, collected now (one collect at a time: the OTel
        reader's collector hands each collect's data to one caller only)."""
        with self._collect_lock:
            return with_mountpoint(self.own_registry.collect(), self.mountpoint)

    def collect(self) -> Iterator[Any]:
        """The served families: this mount's, then every live peer's, merged (prometheus_client collector)."""
        peers: list[list[Any]] = []
        if self.path is not None:
            peers, _serving = read_peers(os.path.dirname(self.path), exclude=self.path,
                                         bind_address=self.bind_address)
        yield from merge([self.own_families(), *peers])

    def publish(self, failed: bool = False) -> None:
        """Write this mount's exposition to :attr:`path` (atomic); an OSError is one debug line.

        ``failed``: the last publication of a mount that failed (``failed=1`` in the header):
        the holder keeps serving it after this process exited, so the ObsctlMountDown alert
        sees ``obsctl_mount_up 0`` until the mount is started again (its next publication
        replaces the file) or ``obsctl unmount`` removes it."""
        if self.path is None or self._closed:
            return
        # start-up cost: as above
        from prometheus_client.exposition import generate_latest
        from prometheus_client.registry import CollectorRegistry  # start-up cost: as above

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self.own_families))
        header = f"# obsctl-publisher pid={os.getpid()} start={self._start if self._start is not None else '-'} " \
                 f"serving={0 if failed else 1 if self.serving else 0}{' failed=1' if failed else ''} " \
                 f"bind={self.bind_address}\n"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
            atomic_write(self.path, header.encode() + generate_latest(registry), 0o640)
        except OSError as exc:
            log.debug("cannot publish metrics to %s: %s", self.path, exc)

    # -- the port ---------------------------------------------------------------------
    def try_bind(self) -> bool:
        """Bind and serve if nobody does; True while serving. Never raises."""
        if self.serving or self._closed:
            return self.serving
        # start-up cost: the server loads only with a bind_address
        from prometheus_client import CollectorRegistry, make_wsgi_app
        from waitress.server import create_server  # start-up cost: as above

        host, _sep, port = self.bind_address.rpartition(":")
        served = CollectorRegistry(auto_describe=False)
        served.register(self)
        try:
            server = create_server(make_wsgi_app(served), host=host.strip("[]"), port=int(port), **SERVER_SETTINGS)
        except OSError as exc:
            self.bind_error = f"cannot serve Prometheus metrics on {self.bind_address}: {exc.strerror or exc}"
            self._bind_failed(exc)
            return False
        threading.Thread(target=server.run, name="prometheus-server", daemon=True).start()
        self._server, self.serving, self.bind_error, self._foreign_polls = server, True, "", 0
        if self._informed or self._warned:
            log.warning("now serving the host's Prometheus endpoint %s (the previous holder went away)",
                        self.bind_address)
        return True

    def _bind_failed(self, exc: OSError) -> None:
        if exc.errno != errno.EADDRINUSE or self.path is None:
            self._warn_once(f"{self.bind_error}; the mount is unaffected, obsctl retries at every poll")
            return
        _groups, peer_serving = read_peers(os.path.dirname(self.path), exclude=self.path, remove_dead=False,
                                           bind_address=self.bind_address)
        if peer_serving:
            self._foreign_polls = 0
            if not self._informed:
                self._informed = True
                log.info("%s is served by another obsctl process; this mount's series are published to %s "
                         "for it", self.bind_address, self.path)
            return
        self._foreign_polls += 1
        if self._foreign_polls >= FOREIGN_HOLDER_POLLS:
            self._warn_once(f"{self.bind_error} and no obsctl process serves it: something else holds the port, "
                            "so this mount's series cannot be scraped there; the mount is unaffected, obsctl "
                            "retries at every poll")

    def _warn_once(self, text: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("%s", text)

    def poll(self) -> None:
        """One round: take the port if it is free, then publish. Never raises."""
        self.try_bind()
        self.publish()

    def close(self, failed: bool = False) -> None:
        """Stop serving (every open connection dropped, bounded ~1 s) and remove the published file,
        or, for a mount that ``failed``, leave its last publication (:meth:`publish`) in place."""
        if self._closed:
            return
        if failed:
            self.publish(failed=True)
        self._closed = True
        if self.path is not None and not failed:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self._stop_server()

    def _stop_server(self) -> None:
        server, self._server, self.serving = self._server, None, False
        if server is None:
            return
        server.handle_close = server.close  # the loop sees the shutdown as a close event: no "unhandled" line
        try:
            # Linux stops listening at once on shutdown(2) of a listening socket; a plain close
            # waits for the event loop's poll(2) (up to waitress' 1 s loop timeout) to let go of it
            server.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for channel in list(server._map.values()):
            try:
                channel.close()
            except OSError:
                pass
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
