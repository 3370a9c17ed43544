"""RcloneRcCollector against a tiny real HTTP server serving captured rc answers.

Fixtures: tests/fixtures/rclone/{ok,write400,auth403}/{core_stats.json,
vfs_stats.json,metrics.txt}, POST core/stats, POST vfs/stats and GET /metrics
of rclone 1.60 (tests/fixtures/capture.sh).
"""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from pathlib import Path

import pytest

from obsctl.collectors.rclone_rc import RcloneRcCollector, parse_http_status_codes
from obsctl.instruments import MountAttributes
from support.metrics import data_points, in_memory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rclone"
ATTRS = MountAttributes(bucket="obsctl-fixture", impl="rclone", mountpoint="/mnt/fixture")


def make():
    return in_memory(ATTRS)


def errors(reader):
    out = {}
    for _metric, labels, value in data_points(reader, "obsctl_errors"):
        assert labels["bucket"] == ATTRS.bucket
        out[labels["error_type"]] = value
    return out


class RcHandler(http.server.BaseHTTPRequestHandler):
    """Answers like rclone's rc from the fixture directory of ``server.scenario``."""

    def _send(self, body: bytes, ctype: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.requests.append(("POST", self.path))
        name = {"/core/stats": "core_stats.json", "/vfs/stats": "vfs_stats.json"}.get(self.path)
        if name is None:
            self._send(b'{"error":"couldn\'t find method"}', "application/json", 404)
            return
        self._send((FIXTURES / self.server.scenario / name).read_bytes(), "application/json")

    def do_GET(self):  # noqa: N802
        self.server.requests.append(("GET", self.path))
        if self.path != "/metrics":
            self._send(b"not found", "text/plain", 404)
            return
        self._send((FIXTURES / self.server.scenario / "metrics.txt").read_bytes(),
                   "text/plain; version=0.0.4")

    def log_message(self, *args):
        pass


class TcpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _rest = super().get_request()
        return request, ("unix", 0)


def serve(server, scenario):
    server.scenario = scenario
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return server


@pytest.fixture
def rc():
    server = serve(TcpServer(("127.0.0.1", 0), RcHandler), "ok")
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("scenario,want", [
    ("ok", {}),
    # core/stats errors 1; rclone_http_status_code{code="400",method="HEAD"} 1
    ("write400", {"rclone_error": 1, "http_400": 1}),
    # 5 x 403 on listings; core/stats "errors" stays 0 (it counts transfers only)
    ("auth403", {"http_403": 5}),
])
def test_first_poll(rc, scenario, want):
    rc.scenario = scenario
    reader, ins = make()
    collector = RcloneRcCollector(ins, "http://127.0.0.1:%d" % rc.server_port)
    collector.poll()
    assert errors(reader) == want
    core = json.loads((FIXTURES / scenario / "core_stats.json").read_text())
    assert collector.last_core_stats == core
    assert collector.last_vfs_stats["metadataCache"] == json.loads(
        (FIXTURES / scenario / "vfs_stats.json").read_text())["metadataCache"]
    assert collector.reachable
    assert sorted(rc.requests) == [("GET", "/metrics"), ("POST", "/core/stats"),
                                   ("POST", "/vfs/stats")]
    collector.close()


def test_deltas_between_polls(rc):
    reader, ins = make()
    collector = RcloneRcCollector(ins, "http://127.0.0.1:%d/" % rc.server_port)
    rc.scenario = "ok"
    collector.poll()
    collector.poll()
    assert errors(reader) == {}
    rc.scenario = "write400"
    collector.poll()
    collector.poll()  # same values again: no new errors
    assert errors(reader) == {"rclone_error": 1, "http_400": 1}
    rc.scenario = "auth403"  # a restarted driver: counters went down, then 403s
    collector.poll()
    assert errors(reader) == {"rclone_error": 1, "http_400": 1, "http_403": 5}


def test_count_initial_false_sets_a_baseline(rc):
    rc.scenario = "write400"
    reader, ins = make()
    collector = RcloneRcCollector(ins, "http://127.0.0.1:%d" % rc.server_port, count_initial=False)
    collector.poll()
    collector.poll()
    assert errors(reader) == {}


def test_metrics_off(rc):
    rc.scenario = "auth403"
    reader, ins = make()
    RcloneRcCollector(ins, "http://127.0.0.1:%d" % rc.server_port, metrics=False).poll()
    assert errors(reader) == {}
    assert ("GET", "/metrics") not in rc.requests


def test_unreachable_never_raises():
    reader, ins = make()
    # a port nobody listens on: bind then close
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    collector = RcloneRcCollector(ins, "http://127.0.0.1:%d" % port, timeout=0.2)
    collector.poll()
    assert not collector.reachable
    assert collector.last_core_stats is None
    assert errors(reader) == {}


def test_unix_socket(tmp_path):
    path = str(tmp_path / "rc.sock")
    server = serve(UnixServer(path, RcHandler), "write400")
    try:
        reader, ins = make()
        collector = RcloneRcCollector(ins, path)
        collector.poll()
        assert errors(reader) == {"rclone_error": 1, "http_400": 1}
        assert collector.last_vfs_stats["fs"].endswith(":obsctl-fixture-nv")
    finally:
        server.shutdown()
        server.server_close()


def test_parse_http_status_codes():
    text = (FIXTURES / "write400" / "metrics.txt").read_text()
    assert parse_http_status_codes(text) == {
        ("200", "GET"): 2, ("200", "HEAD"): 2, ("200", "POST"): 2, ("200", "PUT"): 1,
        ("206", "GET"): 1, ("400", "HEAD"): 1}
