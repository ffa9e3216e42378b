"""The federated loop. It knows the strategy hooks, never a strategy by name."""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pfl.data.types import Client
from pfl.errors import ConfigError, PflError
from pfl.fl.batches import derive_seed
from pfl.fl.callbacks import Callback, RoundInfo
from pfl.fl.evaluate import Evaluation, add_client, all_finite, evaluate
from pfl.strategies.base import Strategy, Update, snapshot

log = logging.getLogger(__name__)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) mapping."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    return 0


class DivergenceError(PflError):
    pass


@dataclass(frozen=True)
class Workload:
    """What a backend needs for the whole run, handed over once (`Backend.bind`): the strategy
    replica its workers run, the model factory, every client that trains or is evaluated, and
    the evaluation settings. A backend never sees the server."""

    strategy: Strategy
    model_factory: Callable[[], nn.Module]
    clients: dict[str, Client]
    n_classes: int
    eval_batch_size: int
    #: the precision evaluation runs in (pfl.metrics.set_inference_precision): workers that are
    #: not forked from the run (Ray actors) set it themselves
    inference_precision: str = "32-true"


class Backend:
    """Runs tasks and returns results: one round's local updates, in the order of `clients`.

    A backend may also compute evaluations elsewhere (worker processes, Ray actors):
    `evaluate(global_weights, client_states, rnd, splits, clients)` yields each client's
    confusion matrices, personalization included (pfl.fl.ray_backend);
    `personal_confusions(...)` the personalized models' and `global_confusions(...)` the global
    model's (pfl.fl.workers). Where it defines none, the server evaluates in its own process.
    """

    workload: Workload

    def bind(self, workload: Workload) -> None:
        self.workload = workload

    def local_updates(self, work: nn.Module, clients: Sequence[Client], global_weights: dict[str, torch.Tensor],
                      states: dict[str, dict[str, Any]], rnd: int, server_state: dict[str, Any]) -> Iterator[Update]:
        raise NotImplementedError

    def close(self) -> None: ...


class SerialBackend(Backend):
    """One client after another in this process, reusing one working model (the strategy is
    the server's own, so `server_state` is already in it)."""

    def local_updates(self, work, clients, global_weights, states, rnd, server_state):
        for c in clients:
            work.load_state_dict(global_weights)
            yield self.workload.strategy.local_update(work, c, states[c.cid], rnd)


@dataclass
class ServerState:
    """Everything a checkpoint must hold to continue a run exactly."""

    rnd: int
    global_weights: dict[str, torch.Tensor]
    client_states: dict[str, dict[str, Any]]
    server: dict[str, Any] = field(default_factory=dict)  # the strategy's state_dict()


@dataclass
class Result:
    evaluation: Evaluation
    metrics: dict[str, float]
    global_weights: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)


class Server:
    def __init__(
        self,
        strategy: Strategy,
        model_factory: Callable[[], nn.Module],
        train_clients: Sequence[Client],
        eval_clients: Sequence[Client],
        classes: list[str],
        *,
        rounds: int,
        seed: int,
        clients_per_round: int | None = None,
        eval_every: int = 1,
        test_every: int | None = None,
        dropout: float = 0.0,
        on_divergence: str = "fail",
        eval_batch_size: int = 4096,
        callbacks: Sequence[Callback] = (),
        backend: Backend | None = None,
    ):
        self.strategy, self.model_factory = strategy, model_factory
        self.train_clients, self.eval_clients, self.classes = list(train_clients), list(eval_clients), classes
        self.rounds, self.seed, self.eval_every = rounds, seed, eval_every
        self.test_every = test_every
        self.dropout, self.on_divergence, self.eval_batch_size = dropout, on_divergence, eval_batch_size
        n = len(self.train_clients)
        if clients_per_round is not None and not (1 <= clients_per_round <= n):
            raise ConfigError("federation.clients_per_round", clients_per_round,
                              f"an integer in [1, {n}] (the number of training clients) or null for all")
        self.clients_per_round = clients_per_round or n
        # The number dropped is the same every round, so a dropout that leaves nobody is known now.
        k = self.clients_per_round
        if int(round(dropout * k)) >= k:
            raise ConfigError("federation.dropout", dropout,
                              f"a fraction that leaves at least one of the {k} clients sampled per round "
                              f"(round({dropout} * {k}) = {int(round(dropout * k))} would drop them all)",
                              hint="Lower federation.dropout or raise federation.clients_per_round")
        self.callbacks = list(callbacks)
        #: seconds each callback has spent in each hook ("MlflowTracker.on_run_end"): where a run's time goes
        self.hook_seconds: defaultdict[str, float] = defaultdict(float)
        self.backend = backend or SerialBackend()
        from pfl.metrics import get_inference_precision

        self.backend.bind(Workload(strategy, model_factory,
                                   {c.cid: c for c in [*self.train_clients, *self.eval_clients]},
                                   len(classes), eval_batch_size, get_inference_precision()))
        for c in self.train_clients:
            strategy.check_client(c)

    def _emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            t = time.perf_counter()
            getattr(cb, hook)(*args)
            self.hook_seconds[f"{type(cb).__name__}.{hook}"] += time.perf_counter() - t

    def initial_state(self) -> ServerState:
        torch.manual_seed(derive_seed(self.seed, "init"))
        model = self.model_factory()
        states = {c.cid: self.strategy.init_client_state(c) for c in {**{c.cid: c for c in self.train_clients},
                                                                       **{c.cid: c for c in self.eval_clients}}.values()}
        weights = snapshot(model)
        return ServerState(0, weights, states, self.strategy.init_server_state(weights))

    def sample(self, rnd: int) -> tuple[list[Client], list[str]]:
        """Clients of this round and those that drop out, both seeded by (seed, round)."""
        rng = np.random.default_rng(derive_seed(self.seed, rnd, "sample"))
        n, k = len(self.train_clients), self.clients_per_round
        idx = sorted(rng.choice(n, size=k, replace=False)) if k < n else list(range(n))
        chosen = [self.train_clients[i] for i in idx]
        n_drop = int(round(self.dropout * len(chosen)))
        dropped = set(rng.choice(len(chosen), size=n_drop, replace=False).tolist()) if n_drop else set()
        if len(dropped) == len(chosen):
            raise PflError(f"round {rnd}: all {len(chosen)} sampled clients dropped out "
                           f"(federation.dropout={self.dropout}); nothing to aggregate")
        return [c for i, c in enumerate(chosen) if i not in dropped], [chosen[i].cid for i in sorted(dropped)]

    def run(self, state: ServerState | None = None) -> Result:
        state = state or self.initial_state()
        global_model = self.model_factory()
        global_model.load_state_dict(state.global_weights)
        work = self.model_factory()
        self.strategy.load_state_dict(state.server)
        history: list[dict[str, float]] = []
        evaluation: Evaluation | None = None
        self._emit("on_run_start", self)
        for rnd in range(state.rnd + 1, self.rounds + 1):
            t0 = time.perf_counter()
            clients, dropped = self.sample(rnd)
            if dropped:
                log.info("round %d: clients dropped out: %s", rnd, ", ".join(dropped))
            self._emit("on_round_start", rnd, [c.cid for c in clients])
            before = state.global_weights
            updates: list[Update] = []
            diverged: list[str] = []
            results = self.backend.local_updates(work, clients, before, state.client_states, rnd,
                                                 self.strategy.state_dict())
            for c, upd in zip(clients, results, strict=True):
                if not (np.isfinite(upd.metrics.get("train_loss", 0.0)) and all_finite(upd.weights)):
                    if self.on_divergence != "drop":
                        raise DivergenceError(
                            f"round {rnd}: client {c.cid!r} diverged (non-finite loss or weights); lower the "
                            f"learning rate, or set federation.on_divergence=drop to leave such updates out")
                    log.warning("round %d: client %s diverged; its update is dropped", rnd, c.cid)
                    diverged.append(c.cid)
                else:
                    updates.append(upd)
                    state.client_states[c.cid] = upd.state
                self._emit("on_client_end", rnd, c.cid)
            if not updates:
                raise DivergenceError(f"round {rnd}: every client update diverged; nothing to aggregate")
            after = self.strategy.aggregate(before, updates)
            global_model.load_state_dict(after)
            state = ServerState(rnd, after, state.client_states, self.strategy.state_dict())
            info = RoundInfo(rnd, self.rounds, before, after, updates, dropped, diverged,
                             client_states=state.client_states, server_state=state.server)
            info.metrics["train_loss"] = float(np.average(
                [u.metrics.get("train_loss", np.nan) for u in updates], weights=[u.num_samples for u in updates]))
            info.metrics["local_steps"] = float(np.mean([u.metrics.get("steps", np.nan) for u in updates]))
            # What a client sends per round (shared weights and extras) and receives (the shared
            # global weights): the communication cost of the strategy.
            info.metrics["bytes_sent_per_client"] = float(np.mean([u.bytes_sent for u in updates]))
            info.metrics["bytes_received_per_client"] = float(tensor_bytes(self.strategy.shared(after))
                                                              + tensor_bytes(state.server))
            if rnd % self.eval_every == 0 or rnd == self.rounds:
                evaluation = self.evaluate(global_model, work, state, rnd, self.splits(rnd))
                info.metrics.update(evaluation.metrics())
            info.seconds = time.perf_counter() - t0
            info.metrics["round_seconds"] = info.seconds
            history.append({"round": rnd, **info.metrics})
            self._emit("on_round_end", info)
        if evaluation is None:  # resumed after the last round: evaluate the final model again
            evaluation = self.evaluate(global_model, work, state, self.rounds)
        result = Result(evaluation, evaluation.metrics(), state.global_weights, history)
        self._emit("on_run_end", result)
        return result

    def splits(self, rnd: int) -> tuple[str, ...]:
        """The splits evaluated in round `rnd`: val at every evaluation, test only every
        `test_every` rounds (default: at every evaluation) and always after the last."""
        if self.test_every is None or rnd % self.test_every == 0 or rnd == self.rounds:
            return ("val", "test")
        return ("val",)

    def evaluate(self, global_model: nn.Module, scratch: nn.Module, state: ServerState, rnd: int,
                 splits: Sequence[str] = ("val", "test")) -> Evaluation:
        weights = global_model.state_dict()
        on_client = functools.partial(self._emit, "on_client_end", rnd)
        remote = getattr(self.backend, "evaluate", None)  # a backend may evaluate clients in parallel
        if remote is not None:
            ev = Evaluation(self.classes, list(self.eval_clients))
            results = remote(weights, state.client_states, rnd, tuple(splits), self.eval_clients)
            for c, cms in zip(self.eval_clients, results, strict=True):
                add_client(ev, c, cms)
                on_client(c.cid)
            return ev
        # A backend with workers may compute the global model's and the personalized models'
        # confusion matrices there.
        personal = getattr(self.backend, "personal_confusions", None)
        shared = getattr(self.backend, "global_confusions", None)
        return evaluate(global_model, scratch, self.eval_clients, self.classes, self.personalizer(state, rnd),
                        self.eval_batch_size, on_client=on_client, with_global=self.strategy.has_global,
                        personal=personal and functools.partial(personal, weights, state.client_states, rnd,
                                                                tuple(splits)),
                        shared=shared and functools.partial(shared, weights, tuple(splits)), splits=splits)

    def personalizer(self, state: ServerState, rnd: int) -> Callable[[nn.Module, Client], nn.Module] | None:
        """The client's personalized model, or None where it is the global model."""
        if not self.strategy.evaluates_personal:
            return None

        def personalize(model: nn.Module, client: Client) -> nn.Module:
            return self.strategy.personal_model(model, client, state.client_states[client.cid], rnd)
        return personalize
