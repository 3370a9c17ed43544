"""Polling helpers shared by the integration tests."""

from __future__ import annotations

import time
from typing import Any, Callable, Union

#: What went wrong, said when the wait times out: a text, or a function that builds it then
#: (so it can show the state at the moment of failure).
Message = Union[str, Callable[[], str]]


def wait_until(predicate: Callable[[], Any], timeout: float, message: Message = "", *,
               interval: float = 0.1) -> Any:
    """Call ``predicate`` every ``interval`` s until it returns a true value, and return that value.

    Raises:
        AssertionError: ``timeout`` s passed first; the text names the timeout
            and ``message`` (called when it is a function).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message() if callable(message) else message}")
        time.sleep(interval)
