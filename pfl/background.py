"""Work that must happen in order but need not hold up a round: one background thread per queue."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class InOrder:
    """Calls run in order in one background thread (started on the first call, stopped by
    `close`), so a round does not wait for MLflow's store or for fsync. `close` waits for the
    calls made so far and raises the first error. After an error the queue stays failed: no
    later call runs (a checkpoint queued behind a failed ledger entry is never written), and
    every `submit` and `close` raises that error.

    The thread starts on the first call, after the first round, by which time worker processes
    (trainer.workers) are forked: a fork never copies a process in which this thread holds a lock.
    """

    def __init__(self, name: str):
        self.name = name
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, fn: Callable[..., object], *args) -> None:
        self._raise()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        self._q.put((fn, args))

    def _loop(self) -> None:
        while (item := self._q.get()) is not None:
            fn, args = item
            if self._error is None:
                try:
                    fn(*args)
                except BaseException as e:  # noqa: BLE001 - raised in the run's thread by close/submit
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self, timeout: float | None = None) -> None:
        """Wait for every call submitted so far; raise the first error."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"{self.name}: calls still running after {timeout} s")
            self._thread = None
        self._raise()
