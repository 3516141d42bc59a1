"""Ctrl-C and SIGTERM honoured at safe points.

A long computation (a run's chunks, a sweep's batches) calls `check()` between its
steps. With `handling()` active (the CLI), SIGINT and SIGTERM only set a flag, so the
signal can never land inside a callback where Python would print "Exception ignored"
and swallow it; `check()` then raises `Interrupted` (a KeyboardInterrupt that knows
its signal and exit status: 130 for SIGINT, 143 for SIGTERM) at the next safe point.
A second signal while the first is pending raises at once (and stays pending, so that
the next `check()` raises it again should the first raise land where Python ignores
exceptions). Without `handling()` (library use) Python's own KeyboardInterrupt arrives
between chunks as usual.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "check", "handling", "pending", "wait", "with_message"]

_state: dict = {"signum": None}
_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(KeyboardInterrupt):
    """A run or sweep stopped by a signal; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int = signal.SIGINT, message: str = ""):
        super().__init__(message)
        self.signum = signum
        self.exit_code = _EXIT.get(signum, 128 + int(signum))

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def pending() -> int | None:
    """The signal received since the last `check`, or None."""
    return _state["signum"]


def check() -> None:
    """Raise `Interrupted` if a signal arrived while `handling()` was active."""
    signum = _state["signum"]
    if signum is not None:
        _state["signum"] = None
        raise Interrupted(signum)


def wait(future, poll_s: float = 0.1):
    """The result of a `concurrent.futures.Future`, checking for a pending signal every
    `poll_s` seconds meanwhile (a plain `result()` would hold a signal until it returns)."""
    while True:
        try:
            return future.result(timeout=poll_s)
        except concurrent.futures.TimeoutError:
            check()


def with_message(err: KeyboardInterrupt, message: str) -> Interrupted:
    """`err` (an `Interrupted`, or Python's own KeyboardInterrupt: SIGINT) as an
    `Interrupted` of the same signal that says `message`."""
    return Interrupted(getattr(err, "signum", signal.SIGINT), message)


def _handler(signum, frame) -> None:
    if _state["signum"] is not None:  # a second signal: stop now (and keep it pending)
        raise Interrupted(signum)
    _state["signum"] = signum


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Inside: SIGINT and SIGTERM set the flag `check()` reads (main thread only;
    elsewhere a no-op). The previous handlers are restored on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in _EXIT}
    _state["signum"] = None
    for s in _EXIT:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state["signum"] = None
