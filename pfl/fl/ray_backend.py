"""`federation.backend=ray`: the clients of a round train in parallel Ray actors.

Each actor holds its own copy of the strategy and a working model, built once, and caches the
clients it has been sent, so a round ships only the global weights and the client states. A
client's local update is seeded by (seed, round, client) and never depends on which process
runs it, so the metrics equal the serial backend's when the torch thread count per worker
equals the serial run's (set `trainer.threads`; a different thread count changes the order of
floating-point sums, as it would in a serial run).

Locally (no address) Ray starts on this machine with one actor per `threads` cores; given
`federation.ray_address` (e.g. `auto` or `ray://head:10001`) it joins that cluster, whose
nodes must have pfl installed in the same environment.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from pfl.data.types import Client
from pfl.errors import PflError
from pfl.fl.server import Backend
from pfl.strategies.base import Update

log = logging.getLogger(__name__)

INSTALL_HINT = 'federation.backend=ray needs Ray: pip install "pfl[ray]" (or pip install "ray>=2.9")'


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PflError(INSTALL_HINT) from None
    return ray


class _Worker:
    """One Ray actor: a strategy replica, a working model and the clients seen so far."""

    def __init__(self, payload: tuple, threads: int):
        from pfl.fl.trainer import quiet_lightning

        torch.set_num_threads(threads)
        quiet_lightning()  # unpickling skips ClientTrainer.__init__, where the driver did this
        self.strategy, model_factory = payload
        self.model: nn.Module = model_factory()
        self.clients: dict[str, Client] = {}

    def update(self, cid: str, client_ref: list, global_weights: dict[str, torch.Tensor],
               state: dict[str, Any], rnd: int) -> Update:
        import ray

        client = self.clients.get(cid)
        if client is None:
            # The reference arrives wrapped in a list so Ray does not fetch it for every call.
            client = self.clients[cid] = ray.get(client_ref[0])
        self.model.load_state_dict(global_weights)
        return self.strategy.local_update(self.model, client, state, rnd)

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

    def __init__(self, address: str | None = None, threads: int | None = None, workers: int | None = None):
        self.ray = _import_ray()
        self.address = address or None
        self.threads = int(threads or 1)
        if self.threads < 1:
            raise PflError(f"trainer.threads={threads!r} is not allowed: expected an integer >= 1")
        self.workers = workers
        self.actors: list = []
        self._client_refs: dict[str, Any] = {}
        self._finalizer = None
        self.started_ray = False

    # -- lifecycle ---------------------------------------------------------------------------
    def _init_ray(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                      log_to_driver=True)
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                # An object store of a fixed, modest size: Ray's default (30% of RAM) is far more
                # than client tensors and weights need.
                ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=256 * 1024 ** 2, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"federation.ray_address={self.address!r}" if self.address else "a local Ray instance"
            raise PflError(f"could not start or reach {where}: {str(e).splitlines()[0][:300]}") from None
        self.started_ray = True

    def start(self, strategy, model_factory, n_clients: int) -> None:
        """Start Ray (unless running) and the actors; called on the first round."""
        ray = self.ray
        self._init_ray()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = self.workers or max(1, cpus // self.threads)
        n = max(1, min(n, n_clients))
        if self.threads * n > cpus:
            log.warning("ray: %d workers x %d threads exceed the cluster's %d CPUs; some wait", n, self.threads, cpus)
        actor = ray.remote(num_cpus=self.threads)(_Worker)
        payload = ray.put((strategy, model_factory))
        self.actors = [actor.remote(payload, self.threads) for _ in range(n)]
        self._finalizer = weakref.finalize(self, _kill, list(self.actors))
        log.info("ray backend: %d workers x %d threads (cluster CPUs: %d)", n, self.threads, cpus)

    def close(self) -> None:
        """Stop the actors (Ray itself stays up for whoever else uses it in this process)."""
        if self._finalizer is not None:
            self._finalizer()
        self.actors, self._client_refs = [], {}

    # -- one round ---------------------------------------------------------------------------
    def local_updates(self, server, work: nn.Module, clients: Sequence[Client],
                      global_weights: dict[str, torch.Tensor], states: dict[str, dict[str, Any]],
                      rnd: int) -> Iterator[Update]:
        ray = self.ray
        if not self.actors:
            self.start(server.strategy, server.model_factory, len(server.train_clients))
        for c in clients:
            if c.cid not in self._client_refs:
                self._client_refs[c.cid] = ray.put(c)
        weights_ref = ray.put(global_weights)
        # Largest clients first: the round ends when the last worker does.
        pending = deque(sorted(range(len(clients)), key=lambda i: -len(clients[i].train)))
        idle = list(self.actors)
        running: dict[Any, int] = {}
        owner: dict[Any, Any] = {}
        done_updates: dict[int, Update] = {}
        next_i = 0
        while next_i < len(clients):
            while idle and pending:
                i = pending.popleft()
                a = idle.pop()
                c = clients[i]
                ref = a.update.remote(c.cid, [self._client_refs[c.cid]], weights_ref, states[c.cid], rnd)
                running[ref], owner[ref] = i, a
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                i = running.pop(ref)
                idle.append(owner.pop(ref))
                try:
                    done_updates[i] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    # A user-fixable error reads as one line, as it would from the serial backend.
                    if isinstance(getattr(e, "cause", None), PflError):
                        raise e.cause from None
                    raise
            while next_i in done_updates:
                yield done_updates.pop(next_i)
                server._emit("on_client_end", rnd, clients[next_i].cid)
                next_i += 1
