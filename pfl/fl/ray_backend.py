"""`federation.backend=ray`: the clients of a round train, and are evaluated, in parallel Ray actors.

Each actor holds its own copy of the strategy and a working model, built once, and caches the
clients it has been sent, so a round ships only the global weights and the client states. A
client's local update and its personalization are seeded by (seed, round, client) and never
depend on which process runs them, so the metrics equal the serial backend's when the torch
thread count per worker equals the serial run's (set `trainer.threads`; a different thread
count changes the order of floating-point sums, as it would in a serial run). The strategy's
hooks must act only through what they return (Update, the personalized model) and the server
state: every call ships the driver's `strategy.state_dict()` to the replica, so server state
(SCAFFOLD's control variate) is the same in every actor; other changes a replica makes to its
own attributes stay in its actor.

Locally (no address) Ray starts on this machine with one actor per `threads` cores; given
`federation.ray_address` (e.g. `auto` or `ray://head:10001`) it joins that cluster, whose
nodes must have pfl installed in the same environment.
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from pfl.data.types import Client
from pfl.errors import PflError
from pfl.fl.server import Backend
from pfl.fl.workers import WorkerCore
from pfl.strategies.base import Update

log = logging.getLogger(__name__)

INSTALL_HINT = 'federation.backend=ray needs Ray: pip install "pfl[ray]" (or pip install "ray>=2.9")'


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PflError(INSTALL_HINT) from None
    return ray


class _Worker(WorkerCore):
    """One Ray actor: a WorkerCore that fetches the clients it is sent once and keeps them."""

    def __init__(self, payload: tuple, threads: int, precision: str = "32-true"):
        from pfl.fl.trainer import quiet_lightning
        from pfl.metrics import set_inference_precision

        torch.set_num_threads(threads)
        set_inference_precision(precision)  # not forked from the run: told, not inherited
        quiet_lightning()  # unpickling skips ClientTrainer.__init__, where the driver did this
        super().__init__(*payload)

    def _client(self, cid: str, client_ref: list) -> Client:
        import ray

        client = self.clients.get(cid)
        if client is None:
            client = self.clients[cid] = ray.get(client_ref[0])
        return client

    def update(self, cid: str, client_ref: list, *args) -> Update:
        return super().update(self._client(cid, client_ref), *args)

    def evaluate(self, cid: str, client_ref: list, *args) -> dict:
        return super().evaluate(self._client(cid, client_ref), *args)

    def pid(self) -> int:
        return os.getpid()


def _kill(actors: list) -> None:
    try:
        import ray

        if ray.is_initialized():
            for a in actors:
                ray.kill(a)
    except Exception:  # interpreter shutdown: Ray may already be gone
        pass


class RayBackend(Backend):
    """Clients of a round in parallel Ray actors; updates come back in the order of `clients`.

    threads: torch threads per actor (default 1); each actor reserves that many Ray CPUs, so a
    machine with C cores runs C // threads clients at once and workers do not fight for cores.
    workers: number of actors (default: as many as the cluster's CPUs allow, at most one per
    training client).
    """

    def __init__(self, address: str | None = None, threads: int | None = None, workers: int | None = None,
                 gpus: float = 0.0):
        self.ray = _import_ray()
        self.address = address or None
        self.threads = int(threads or 1)
        if self.threads < 1:
            raise PflError(f"trainer.threads={threads!r} is not allowed: expected an integer >= 1")
        self.workers = workers
        #: GPUs each actor requests (trainer.accelerator=gpu: one each, so actors = GPUs)
        self.gpus = float(gpus)
        self.actors: list = []
        self._client_refs: dict[str, Any] = {}
        self._finalizer = None
        self.started_ray = False

    # -- lifecycle ---------------------------------------------------------------------------
    def _init_ray(self, data_bytes: int) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                      log_to_driver=True)
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                # Room for the clients' tensors and a round's weights, not Ray's default 30% of RAM.
                store = max(256 * 2 ** 20, 2 * data_bytes + 128 * 2 ** 20)
                ray.init(num_cpus=len(os.sched_getaffinity(0)), object_store_memory=store, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"federation.ray_address={self.address!r}" if self.address else "a local Ray instance"
            raise PflError(f"could not start or reach {where}: {str(e).splitlines()[0][:300]}") from None
        self.started_ray = True

    def start(self) -> None:
        """Start Ray (unless running) and the actors; called on the first task."""
        import gc

        ray = self.ray
        # A finished run's backend that only a reference cycle keeps alive still holds its
        # actors' CPUs; collecting it first lets the next job of a sequential sweep start its own.
        gc.collect()
        wl = self.workload
        clients = wl.clients
        data = sum(s.x.element_size() * s.x.numel() for c in clients.values() for s in (c.train, c.val, c.test))
        self._init_ray(data)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = self.workers or max(1, cpus // self.threads)
        if self.gpus:
            n = min(n, max(1, int(ray.cluster_resources().get("GPU", 0) // self.gpus)))
        n = max(1, min(n, len(clients)))
        if self.threads * n > cpus:
            log.warning("ray: %d workers x %d threads exceed the cluster's %d CPUs; some wait", n, self.threads, cpus)
        actor = ray.remote(num_cpus=self.threads, num_gpus=self.gpus)(_Worker)
        payload = ray.put((wl.strategy, wl.model_factory))
        self.actors = [actor.remote(payload, self.threads, wl.inference_precision) for _ in range(n)]
        self._finalizer = weakref.finalize(self, _kill, list(self.actors))
        log.info("ray backend: %d workers x %d threads (cluster CPUs: %d)", n, self.threads, cpus)

    def close(self) -> None:
        """Stop the actors (Ray itself stays up for whoever else uses it in this process)."""
        if self._finalizer is not None:
            self._finalizer()
        self.actors, self._client_refs = [], {}

    # -- one round ---------------------------------------------------------------------------
    def _ref(self, client: Client) -> list:
        if client.cid not in self._client_refs:
            self._client_refs[client.cid] = self.ray.put(client)
        # Wrapped in a list so Ray hands the worker the reference, not a fresh copy per call.
        return [self._client_refs[client.cid]]

    def _in_order(self, calls: Sequence[Callable[[Any], Any]], sizes: Sequence[int]) -> Iterator[Any]:
        """Run calls[i](actor) on idle actors, largest first; yield the results in call order."""
        ray = self.ray
        pending = deque(sorted(range(len(calls)), key=lambda i: -sizes[i]))
        idle = list(self.actors)
        running: dict[Any, tuple[int, Any]] = {}
        done: dict[int, Any] = {}
        next_i = 0
        while next_i < len(calls):
            while idle and pending:
                i = pending.popleft()
                actor = idle.pop()
                running[calls[i](actor)] = (i, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                i, actor = running.pop(ref)
                idle.append(actor)
                try:
                    done[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    # A user-fixable error reads as one line, as it would from the serial backend.
                    if isinstance(getattr(e, "cause", None), PflError):
                        raise e.cause from None
                    raise
            while next_i in done:
                yield done.pop(next_i)
                next_i += 1

    def local_updates(self, work: nn.Module, clients: Sequence[Client], global_weights: dict[str, torch.Tensor],
                      states: dict[str, dict[str, Any]], rnd: int, server_state: dict[str, Any]) -> Iterator[Update]:
        if not self.actors:
            self.start()
        weights = self.ray.put(global_weights)
        server_state = self.ray.put(server_state)
        calls = [functools.partial(_call_update, c.cid, self._ref(c), weights, states[c.cid], rnd, server_state)
                 for c in clients]
        yield from self._in_order(calls, [len(c.train) for c in clients])

    def evaluate(self, global_weights: dict[str, torch.Tensor], client_states: dict[str, dict[str, Any]], rnd: int,
                 splits: Sequence[str], clients: Sequence[Client]) -> Iterator[dict]:
        """Each client's confusion matrices (personalization included), in parallel actors, in
        the order of `clients`."""
        if not self.actors:
            self.start()
        wl = self.workload
        weights = self.ray.put(global_weights)
        personalizes = bool(wl.strategy.evaluates_personal)
        server_state = self.ray.put(wl.strategy.state_dict())
        calls = [functools.partial(_call_evaluate, c.cid, self._ref(c), weights,
                                   client_states[c.cid] if personalizes else None, rnd, wl.n_classes,
                                   wl.eval_batch_size, server_state, tuple(splits)) for c in clients]
        sizes = [len(c.train) * personalizes + len(c.val) + len(c.test) for c in clients]
        yield from self._in_order(calls, sizes)


def _call_update(cid, ref, weights, state, rnd, server_state, actor):
    return actor.update.remote(cid, ref, weights, state, rnd, server_state)


def _call_evaluate(cid, ref, weights, state, rnd, n_classes, batch_size, server_state, splits, actor):
    return actor.evaluate.remote(cid, ref, weights, state, rnd, n_classes, batch_size, server_state, None, splits)
