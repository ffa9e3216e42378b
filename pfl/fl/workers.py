"""`trainer.workers=N`: the clients of a round train, and are personalized, in N forked processes.

The workers are forked from the run once, on the first round, so they inherit the federation's
tensors, the strategy and the model factory without copying or pickling them; a round ships
only the global weights, the client states and the strategy's server state, and returns the
updates (or confusion matrices). Each worker keeps one working model for the whole run and
runs `trainer.threads` torch threads (1 by default: on a small CPU two 1-thread workers beat
one 2-thread process, because a batch of 32 beats keeps two threads busy only part of the
time; see BENCHMARKS.md).

A client's update is seeded by (seed, round, client) and never depends on the process that
runs it, so with 1 thread per worker the metrics equal the serial backend's at
`trainer.threads=1` bit for bit (tests/test_workers.py). Clients are handed out largest first
to whichever worker is idle; results come back in the order of the clients.

The global model's evaluation stays in the run's process: one batched pass over every
client's beats (pfl.fl.evaluate.global_confusions); only personalization, which trains, goes
to the workers.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from multiprocessing.connection import wait
from typing import Any

import torch
from torch import nn

from pfl.data.types import Client
from pfl.errors import PflError
from pfl.fl.server import Backend
from pfl.strategies.base import Update

log = logging.getLogger(__name__)


class WorkerCore:
    """What a worker process (or Ray actor) does: a strategy replica, a working model and the
    clients it knows. Every call carries the driver's strategy state, so replicas agree."""

    def __init__(self, strategy, model_factory, clients: dict[str, Client] | None = None):
        self.strategy, self.model_factory = strategy, model_factory
        self._model: nn.Module | None = None
        self.global_model: nn.Module | None = None
        self.clients: dict[str, Client] = dict(clients or {})

    @property
    def model(self) -> nn.Module:
        """The working model, built where the worker runs (building draws from torch's RNG)."""
        if self._model is None:
            self._model = self.model_factory()
        return self._model

    def update(self, client: Client, global_weights: dict[str, torch.Tensor], state: dict[str, Any], rnd: int,
               server_state: dict[str, Any]) -> Update:
        self.strategy.load_state_dict(server_state)
        self.model.load_state_dict(global_weights)
        return self.strategy.local_update(self.model, client, state, rnd)

    def evaluate(self, client: Client, global_weights: dict[str, torch.Tensor], state: dict[str, Any] | None,
                 rnd: int, n_classes: int, batch_size: int, server_state: dict[str, Any],
                 with_global: bool | None = None, splits: Sequence[str] = ("val", "test")) -> dict:
        """Confusion matrices of one client (pfl.fl.evaluate.client_confusions)."""
        from pfl.fl.evaluate import client_confusions

        self.strategy.load_state_dict(server_state)
        if self.global_model is None:
            self.global_model = self.model_factory()
        self.global_model.load_state_dict(global_weights)
        personalize = None
        if state is not None:
            def personalize(model: nn.Module, c: Client) -> nn.Module:
                return self.strategy.personal_model(model, c, state, rnd)
        return client_confusions(self.global_model, self.model, global_weights, client, n_classes, personalize,
                                 batch_size, self.strategy.has_global if with_global is None else with_global,
                                 splits)


    def global_eval(self, global_weights: dict[str, torch.Tensor], cids: Sequence[str], n_classes: int,
                    batch_size: int, splits: Sequence[str] = ("val", "test")) -> dict:
        """The global model's confusion matrices of these clients, in one batched pass."""
        from pfl.fl.evaluate import global_confusions

        if self.global_model is None:
            self.global_model = self.model_factory()
        self.global_model.load_state_dict(global_weights)
        return global_confusions(self.global_model, [self.clients[c] for c in cids], n_classes, batch_size, splits)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling (the run's process re-raises it), else a
    PflError (user-fixable) or RuntimeError carrying its type, message and traceback."""
    import pickle
    import traceback

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, PflError):
            return PflError(text)
        return RuntimeError(f"in worker {os.getpid()}: {text}\n{''.join(traceback.format_exception(exc))}")


def _serve(conn, core: WorkerCore, threads: int) -> None:
    """A worker's loop: (method, cid, args) in, ("ok", result) or ("error", exception) out."""
    torch.set_num_threads(threads)
    from pfl.fl.trainer import quiet_lightning

    quiet_lightning()
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the run's process is gone
            return
        if msg is None:
            return
        method, cid, args = msg
        try:
            fn = getattr(core, method)
            out = ("ok", fn(*args) if cid is None else fn(core.clients[cid], *args))
        except BaseException as e:  # noqa: BLE001 - every error goes back to the run's process
            out = ("error", _portable(e))
        conn.send(out)


def _stop(procs: list, conns: list) -> None:
    for c in conns:
        try:
            c.send(None)
        except (OSError, BrokenPipeError):
            pass
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)


class ProcessBackend(Backend):
    """Clients of a round in `workers` forked processes with `threads` torch threads each."""

    def __init__(self, workers: int = 2, threads: int | None = None):
        if "fork" not in mp.get_all_start_methods():
            raise PflError(f"trainer.workers={workers} needs the fork start method, which this platform "
                           f"lacks; use trainer.workers=1 or federation.backend=ray")
        self.workers, self.threads = int(workers), int(threads or 1)
        self.procs: list = []
        self.conns: list = []
        self._finalizer = None

    def start(self) -> None:
        """Fork the workers (on the first task: they inherit the workload as it is then)."""
        wl = self.workload
        n = max(1, min(self.workers, len(wl.clients)))
        ctx = mp.get_context("fork")
        core = WorkerCore(wl.strategy, wl.model_factory, wl.clients)
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, core, self.threads), daemon=True)
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        self._finalizer = weakref.finalize(self, _stop, list(self.procs), list(self.conns))
        log.info("process backend: %d workers x %d threads", n, self.threads)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self.procs, self.conns = [], []

    def _in_order(self, calls: Sequence[tuple[str, str, tuple]], sizes: Sequence[int]) -> Iterator[Any]:
        """Run calls on idle workers, largest first; yield the results in call order."""
        pending = deque(sorted(range(len(calls)), key=lambda i: -sizes[i]))
        idle = list(self.conns)
        running: dict[Any, int] = {}
        done: dict[int, Any] = {}
        next_i = 0
        while next_i < len(calls):
            while idle and pending:
                i = pending.popleft()
                conn = idle.pop()
                conn.send(calls[i])
                running[conn] = i
            for conn in wait(list(running)):
                i = running.pop(conn)
                idle.append(conn)
                try:
                    status, out = conn.recv()
                except EOFError:
                    raise PflError(f"a worker process died while running {calls[i][0]} {calls[i][1] or ''!r} "
                                   f"(out of memory?); rerun with trainer.workers=1 to see its error") from None
                if status == "error":
                    raise out
                done[i] = out
            while next_i in done:
                yield done.pop(next_i)
                next_i += 1

    def local_updates(self, work: nn.Module, clients: Sequence[Client], global_weights: dict[str, torch.Tensor],
                      states: dict[str, dict[str, Any]], rnd: int, server_state: dict[str, Any]) -> Iterator[Update]:
        if not self.procs:
            self.start()
        calls = [("update", c.cid, (global_weights, states[c.cid], rnd, server_state)) for c in clients]
        yield from self._in_order(calls, [len(c.train) for c in clients])

    def personal_confusions(self, global_weights: dict[str, torch.Tensor], client_states: dict[str, dict[str, Any]],
                            rnd: int, splits: Sequence[str], clients: Sequence[Client]) -> Iterator[dict]:
        """Each client's personalized-model confusion matrices, computed in the workers."""
        if not self.procs:
            self.start()
        wl = self.workload
        server_state = wl.strategy.state_dict()
        calls = [("evaluate", c.cid, (global_weights, client_states[c.cid], rnd, wl.n_classes, wl.eval_batch_size,
                                      server_state, False, tuple(splits))) for c in clients]
        yield from self._in_order(calls, [len(c.train) + len(c.val) + len(c.test) for c in clients])

    def global_confusions(self, global_weights: dict[str, torch.Tensor], splits: Sequence[str],
                          clients: Sequence[Client]) -> dict[str, dict]:
        """The global model's confusion matrices: the clients split into one share per worker,
        balanced by beats, each share one batched pass."""
        if not self.procs:
            self.start()
        wl = self.workload
        shares: list[list[str]] = [[] for _ in self.conns]
        load = [0] * len(shares)
        for c in sorted(clients, key=lambda c: -(len(c.val) + len(c.test))):
            k = load.index(min(load))
            shares[k].append(c.cid)
            load[k] += len(c.val) + len(c.test)
        calls = [("global_eval", None, (global_weights, share, wl.n_classes, wl.eval_batch_size, tuple(splits)))
                 for share in shares if share]
        out: dict[str, dict] = {}
        for part in self._in_order(calls, [load[i] for i, share in enumerate(shares) if share]):
            out.update(part)
        return out
