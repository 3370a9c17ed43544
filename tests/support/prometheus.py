"""A real Prometheus (the Debian package's /usr/bin/prometheus) for tests.

Scrapes one or more targets every second with a temporary config and TSDB,
listens on 127.0.0.1:<free port>, and answers PromQL through its HTTP API.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import requests
import yaml

from .net import free_port

__all__ = ["Prometheus", "prometheus_binary"]

_NO_PROXY = {"http": None, "https": None}


def prometheus_binary() -> str | None:
    for candidate in ("/usr/bin/prometheus", shutil.which("prometheus")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class Prometheus:
    """Args:
        targets: ``HOST:PORT`` scrape targets of the job ``job``.
        scrape_interval: scrape and rule evaluation interval (Prometheus duration).
        job: name of the scrape job of ``targets``.
        extra_jobs: more scrape jobs, job name -> targets.
        rule_files: rule files to load (absolute paths).
    """

    def __init__(self, targets: Iterable[str] | str, scrape_interval: str = "1s",
                 job: str = "obsctl", extra_jobs: dict[str, list[str]] | None = None,
                 rule_files: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.targets = [targets] if isinstance(targets, str) else list(targets)
        self.scrape_interval = scrape_interval
        self.job = job
        self.jobs = {job: self.targets, **(extra_jobs or {})}
        self.rule_files = [str(f) for f in rule_files]
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        """prometheus.yml for the jobs and rule files (YAML by PyYAML)."""
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.scrape_interval,
                       "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {"job_name": name, "scrape_interval": self.scrape_interval,
                 "scrape_timeout": self.scrape_interval,
                 "static_configs": [{"targets": list(targets)}]}
                for name, targets in self.jobs.items()
            ],
        }
        if self.rule_files:
            config["rule_files"] = self.rule_files
        return yaml.safe_dump(config, sort_keys=False)

    def start(self, timeout: float = 30.0) -> "Prometheus":
        binary = prometheus_binary()
        if binary is None:
            raise RuntimeError("prometheus not installed (apt-get install prometheus)")
        self.workdir = Path(tempfile.mkdtemp(prefix="obsctl-prom-"))
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(self.config_text())
        (self.workdir / "data").mkdir()
        self.port = free_port()
        log = open(self.workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.workdir, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            try:
                r = requests.get(f"{self.url}/-/ready", timeout=1, proxies=_NO_PROXY)
                if r.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "Prometheus":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log(self) -> str:
        if self.workdir and (self.workdir / "prometheus.log").exists():
            return (self.workdir / "prometheus.log").read_text(errors="replace")[-4000:]
        return ""

    # -- API -------------------------------------------------------------------

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns ``data.result`` (list of {metric, value})."""
        r = requests.get(f"{self.url}/api/v1/query", params={"query": promql},
                         timeout=5, proxies=_NO_PROXY)
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"PromQL {promql!r} failed: {body}")
        return body["data"]["result"]

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/PATH``; returns ``data``; raises RuntimeError on an API error."""
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=5, proxies=_NO_PROXY)
        body = r.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus API {path} {params} failed: {body}")
        return body["data"]

    def targets_health(self) -> list[dict[str, Any]]:
        r = requests.get(f"{self.url}/api/v1/targets", timeout=5, proxies=_NO_PROXY)
        return r.json()["data"]["activeTargets"]

    def wait_for_query(self, promql: str,
                       predicate: Callable[[list[dict[str, Any]]], Any] = bool,
                       timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``promql`` until ``predicate(result)`` is truthy; return the result."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                health = [
                    (t.get("scrapeUrl"), t.get("health"), t.get("lastError"))
                    for t in self.targets_health()
                ]
                raise AssertionError(
                    f"Prometheus: {promql!r} did not satisfy the predicate within "
                    f"{timeout}s; last result {result!r}; targets {health}")
            time.sleep(0.5)

    @staticmethod
    def values(result: list[dict[str, Any]]) -> list[float]:
        """Float sample values of an instant-vector result (NaN kept)."""
        return [float(s["value"][1]) for s in result]
