"""The molecule scenarios' OTLP receiver: tests/support/otlp_receiver.py as a process.

    otlp_sink.py STATE_DIR

Starts an :class:`OtlpReceiver` on 127.0.0.1 (gRPC and http/protobuf, free
ports), writes ``STATE_DIR/ports.json`` (``{"grpc": P, "http": P}``) once it
listens, then every 0.5 s ``STATE_DIR/received.json``: the number of requests
per signal, the metric names, and the latest value of every Sum / Gauge
series (name, attributes, value, resource) -- what the testinfra verifiers
read on the host. SIGTERM / SIGINT stop it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.otlp_receiver import OtlpReceiver  # noqa: E402


def snapshot(rx: OtlpReceiver) -> dict:
    latest: dict[tuple, dict] = {}
    for p in rx.points():
        key = (p.name, tuple(sorted((k, str(v)) for k, v in p.attributes.items())))
        latest[key] = {"name": p.name, "kind": p.kind, "value": p.value, "monotonic": p.is_monotonic,
                       "attributes": {k: str(v) for k, v in p.attributes.items()},
                       "resource": {k: str(v) for k, v in p.resource.items()}, "time": p.time}
    requests = rx.requests()
    return {
        "requests": {"metrics": sum(r.signal == "metrics" for r in requests),
                     "traces": sum(r.signal == "traces" for r in requests)},
        "metric_names": sorted(rx.metric_names()),
        "series": list(latest.values()),
        "spans": sorted({s.name for s in rx.spans()}),
    }


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def main() -> int:
    state = Path(sys.argv[1])
    state.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rx = OtlpReceiver().start()
    write_json(state / "ports.json", {"grpc": rx.grpc_port, "http": rx.http_port})
    try:
        while not stop.wait(0.5):
            write_json(state / "received.json", snapshot(rx))
    finally:
        rx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
