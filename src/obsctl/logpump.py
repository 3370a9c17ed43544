"""The driver's log: read line by line, kept for failure messages, fed to the log collectors, forwarded redacted.

Secret redaction of forwarded lines is one function, :func:`obsctl.redact.redact`
(``redact(line, secrets)``); this module only calls it.
"""

from __future__ import annotations

import collections
import sys
import threading
from typing import Any, Callable

from obsctl.drivers import Driver
from obsctl.redact import redact


#: Log lines kept for failure messages.
LOG_TAIL = 200
#: Lines buffered for the log collectors until telemetry is up (then replayed).
PENDING_MAX = 100_000


class LogPump(threading.Thread):
    """Reads the driver's merged stdout/stderr line by line.

    Each line is kept in a tail buffer (for failure messages), handed to the
    log collectors (buffered until telemetry is up, so nothing before ready
    is lost), and, when the driver says it is worth it, copied redacted to
    obsctl's stderr.

    Args:
        stream: the read end of the driver's stdout/stderr pipe (binary).
        driver: decides which lines are errors, forwarded, or a start-up verdict.
        secrets: values :func:`obsctl.redact.redact` removes from forwarded lines.
    """

    def __init__(self, stream: Any, driver: Driver, secrets: list[str]) -> None:
        super().__init__(name="driver-log", daemon=True)
        self.stream = stream
        self.driver = driver
        self.secrets = secrets
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
        self.errors: collections.deque[str] = collections.deque(maxlen=20)
        self._lock = threading.Lock()
        self._pending: list[str] | None = []
        self._sinks: list[Callable[[str], None]] = []
        #: The driver's start-up verdict (``ok`` / ``failed``) and the line that gave it.
        self.verdict: str | None = None if driver.has_startup_check else "ok"
        self.verdict_line = ""
        self.verdict_event = threading.Event()
        if self.verdict is not None:
            self.verdict_event.set()

    def attach(self, sinks: list[Callable[[str], None]]) -> None:
        """Start feeding ``sinks``; replay the lines read before."""
        with self._lock:
            pending, self._pending = self._pending or [], None
            self._sinks = sinks
            for line in pending:
                self._feed(line)

    def hold(self) -> None:
        """Buffer lines again (up to :data:`PENDING_MAX`) until the next :meth:`attach`
        (a telemetry reload rebuilds the log collectors)."""
        with self._lock:
            if self._pending is None:
                self._pending = []
            self._sinks = []

    def _feed(self, line: str) -> None:
        for sink in self._sinks:  # LogCollector.feed: never raises (obsctl.collectors.Collector.guard)
            sink(line)

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                continue
            self.tail.append(line)
            if self.driver.is_error(line):
                self.errors.append(line)
            if self.verdict is None:
                verdict = self.driver.startup_verdict(line)
                if verdict is not None:
                    self.verdict, self.verdict_line = verdict, line
                    self.verdict_event.set()
            forwarded = self.driver.forward(line)
            if forwarded is not None:
                sys.stderr.write(f"{self.driver.name}: {redact(forwarded, self.secrets)}\n")
            with self._lock:
                if self._pending is not None:
                    if len(self._pending) < PENDING_MAX:
                        self._pending.append(line)
                else:
                    self._feed(line)
        self.stream.close()
        self.verdict_event.set()  # EOF: the driver is gone, nobody waits for a verdict

    def last_error(self) -> str:
        """The driver's last error line (human-readable, redacted), or a note that it logged none."""
        if not self.errors:
            return f"{self.driver.name} logged no error"
        critical = [line for line in self.errors if self.driver.is_critical(line)]
        return redact(self.driver.summary((critical or self.errors)[-1]), self.secrets)
