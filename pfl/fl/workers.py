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
`trainer.threads=1` bit for bit (tests/test_fast_path.py). Clients are handed out largest first
to whichever worker is idle; results come back in the order of the clients.

`trainer.spread_threads=true` (on in `trainer=fast`) gives a round's one left-over call (a
client's update or personalization, or a lone evaluation share: m = 1, or m mod workers = 1 of
m calls; with two or more left over nothing is spread) the threads of the workers that would
otherwise wait for it, workers x threads: with 3 clients on 2 workers, the
smallest trains after the other two, in the run's own process, on 2 threads instead of beside
the largest on 1. It runs there because GNU OpenMP (torch's on Linux) cannot start threads in a
child forked from a process that has already run threads, as a run in a sweep or after another
run in one process has: such a worker hangs on its first multithreaded op, so workers stay at
one thread. Which client that is and its thread count follow from the client sizes and the
worker count alone (`thread_plan`), never from timing, so a rerun gives the same weights; but a
fit's float sums depend on its thread count, so these runs equal a serial run's only up to
rounding, and their config hash includes `trainer.workers`.

The global model's evaluation is split into one share of clients per worker, balanced by
beats, each share one batched pass (pfl.fl.evaluate.global_confusions); personalization and the
personalized models' evaluation go to the workers client by client.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
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
    import traceback

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, PflError):
            return PflError(text)
        return RuntimeError(f"in worker {os.getpid()}: {text}\n{''.join(traceback.format_exception(exc))}")


def thread_plan(sizes: Sequence[int], workers: int, threads: int, spread: bool,
                cores: int | None = None) -> tuple[list[int], list[int], int]:
    """(order, threads per call, tail): the calls largest first (ties in call order), each on
    `threads`; with `spread`, a last call left over once the `workers` have taken equal numbers
    (m = 1, or m mod workers = 1 of m calls) is the tail (1): it waits until every other call has
    finished and then runs on `cores` threads (default workers x threads) in the run's process.

    Spreading pays where a fit on k threads is faster than on 1 (the CNN-LSTM: 1.75x on 2
    threads) and costs the wait of the workers that finish first."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    per_call = [threads] * len(sizes)
    m, cores = len(sizes), cores or workers * threads
    if spread and workers and cores > threads and (m == 1 or (m > workers and m % workers == 1)):
        per_call[order[-1]] = cores
        return order, per_call, 1
    return order, per_call, 0


def _send(conn, obj: Any) -> None:
    """Pickled by the standard pickler, tensors' bytes inline: a Connection's own pickler, once
    torch.multiprocessing is imported (Lightning imports it), moves every tensor into a new
    shared-memory segment and passes its file descriptor through a helper thread, which cost
    about 30 ms a round trip of the small CNN's few kilobytes (BENCHMARKS.md section 7)."""
    conn.send_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn) -> Any:
    return pickle.loads(conn.recv_bytes())


def _serve(conn, core: WorkerCore, threads: int) -> None:
    """A worker's loop: (method, cid, args) in, ("ok", result) or ("error", exception) out."""
    torch.set_num_threads(threads)
    from pfl.fl.trainer import quiet_lightning

    quiet_lightning()
    while True:
        try:
            msg = _recv(conn)
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
        try:
            _send(conn, out)
        except Exception as e:  # noqa: BLE001 - a result that does not pickle is reported, not lost
            _send(conn, ("error", _portable(e)))


def _stop(procs: list, conns: list) -> None:
    for c in conns:
        try:
            _send(c, None)
        except (OSError, BrokenPipeError):
            pass
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)


class ProcessBackend(Backend):
    """Clients of a round in `workers` forked processes with `threads` torch threads each."""

    def __init__(self, workers: int = 2, threads: int | None = None, spread_threads: bool = False):
        if "fork" not in mp.get_all_start_methods():
            raise PflError(f"trainer.workers={workers} needs the fork start method, which this platform "
                           f"lacks; use trainer.workers=1 or federation.backend=ray")
        self.workers, self.threads = int(workers), int(threads or 1)
        self.spread_threads = bool(spread_threads)
        self.procs: list = []
        self.conns: list = []
        self._finalizer = None
        self._here: WorkerCore | None = None

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

    def _run_here(self, call: tuple[str, str | None, tuple], threads: int) -> Any:
        """A call run in the run's own process on `threads` threads (the tail of `thread_plan`)."""
        if self._here is None:
            wl = self.workload
            self._here = WorkerCore(wl.strategy, wl.model_factory, wl.clients)
        method, cid, args = call
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        # As in a worker, what the call draws from torch's RNG (building models, seeding fits)
        # leaves this process's stream where it was.
        with torch.random.fork_rng(devices=[]):  # CPU only: workers are refused on a GPU
            try:
                fn = getattr(self._here, method)
                return fn(*args) if cid is None else fn(self._here.clients[cid], *args)
            finally:
                torch.set_num_threads(before)

    def _in_order(self, calls: Sequence[tuple[str, str | None, tuple]], sizes: Sequence[int]) -> Iterator[Any]:
        """Run calls on idle workers, largest first, the tail of `thread_plan` in this process
        once the rest are done; yield the results in call order."""
        # Fewer workers than configured where there are fewer clients; the tail gets every core.
        order, threads, tail = thread_plan(sizes, len(self.conns), self.threads, self.spread_threads,
                                           self.workers * self.threads)
        pending = deque(order[:len(order) - tail])
        idle = list(self.conns)
        running: dict[Any, int] = {}
        done: dict[int, Any] = {}
        next_i = 0
        while next_i < len(calls):
            while idle and pending:
                i = pending.popleft()
                conn = idle.pop()
                _send(conn, calls[i])
                running[conn] = i
            if tail and not pending and not running:
                i = order[-1]
                done[i] = self._run_here(calls[i], threads[i])
                tail = 0
            for conn in wait(list(running)) if running else ():
                i = running.pop(conn)
                idle.append(conn)
                try:
                    status, out = _recv(conn)
                except EOFError:
                    self.close()
                    raise PflError(f"a worker process died while running {calls[i][0]} {calls[i][1] or ''!r} "
                                   f"(out of memory?); rerun with trainer.workers=1 to see its error") from None
                if status == "error":
                    # The other workers may still be running calls of this batch; their results
                    # would be read as the next call's. Stopped, so a later call forks afresh.
                    self.close()
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
