"""federation.backend=ray: same config and seed give the serial backend's metrics and weights."""

from __future__ import annotations

import builtins

import pytest
import torch
from compose import make_cfg

from pfl.errors import PflError
from pfl.run import train


def test_missing_ray_is_a_clear_error(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from pfl.fl.ray_backend import RayBackend

    with pytest.raises(PflError, match=r'pip install "pfl\[ray\]"'):
        RayBackend()


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason='Ray is optional (pip install "pfl[ray]"); the Ray backend '
                              "equivalence test needs it")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024 ** 2,
                 logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.parametrize("strategy", ["perfedavg", "scaffold"])
def test_ray_backend_matches_serial(synthetic_db, tmp_path, ray_local, strategy):
    # Sampling and dropout exercise the order in which updates come back; perfedavg exercises a
    # strategy with its own local update, scaffold server state and client state (its control
    # variates travel through the workers). Equal thread counts: a different count changes sums.
    common = (f"strategy={strategy}", "trainer.threads=1", "federation.clients_per_round=5",
              "federation.dropout=0.2", "federation.batch_size=16")
    serial = train(make_cfg(synthetic_db, tmp_path / "serial", *common))
    parallel = train(make_cfg(synthetic_db, tmp_path / "ray", *common, "federation.backend=ray"))
    assert parallel.metrics == serial.metrics
    assert parallel.global_weights.keys() == serial.global_weights.keys()
    assert all(torch.equal(parallel.global_weights[k], serial.global_weights[k]) for k in serial.global_weights)
    assert [h["train_loss"] for h in parallel.history] == [h["train_loss"] for h in serial.history]


class _StubServer:
    """What a backend uses of the server: strategy, model factory, clients, classes, _emit."""

    def __init__(self, strategy, model_factory, clients, classes):
        self.strategy, self.model_factory, self.train_clients = strategy, model_factory, clients
        self.eval_clients, self.classes, self.eval_batch_size = clients, classes, 64
        self.ended: list[str] = []

    def _emit(self, hook, rnd, cid):
        assert hook == "on_client_end"
        self.ended.append(cid)


def test_ray_workers_train_and_evaluate_like_the_serial_backend(synthetic_db, tmp_path, ray_local):
    import functools

    from pfl import config as cfgmod
    from pfl.fl.evaluate import evaluate
    from pfl.fl.ray_backend import RayBackend
    from pfl.fl.server import SerialBackend, ServerState
    from pfl.fl.trainer import ClientTrainer
    from pfl.models import SmallCNN
    from pfl.run import load_federation
    from pfl.strategies import Context, build_strategy

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = cfgmod.prepare(make_cfg(synthetic_db, tmp_path, "strategy=finetune", "epochs=1"))
        fed = load_federation(cfg)
        clients = fed.training_clients
        strategy = build_strategy(cfg.strategy)
        strategy.bind(Context(trainer=ClientTrainer(), optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                              lr=1e-3, batch_size=16, local_epochs=1, seed=0))
        torch.manual_seed(0)
        global_model = SmallCNN()
        weights = global_model.state_dict()
        states = {c.cid: {} for c in clients}
        backend = RayBackend(threads=1, workers=2)
        remote = _StubServer(strategy, SmallCNN, clients, fed.classes)
        got = list(backend.local_updates(remote, SmallCNN(), clients, weights, states, 1))
        local = _StubServer(strategy, SmallCNN, clients, fed.classes)
        want = list(SerialBackend().local_updates(local, SmallCNN(), clients, weights, states, 1))
        # Updates come back in client order although the two workers finish in any order.
        assert [u.cid for u in got] == [c.cid for c in clients] == remote.ended == local.ended
        for a, b in zip(got, want, strict=True):
            assert a.num_samples == b.num_samples and a.metrics == b.metrics
            assert all(torch.equal(a.weights[k], b.weights[k]) for k in b.weights)
        pids = ray_local.get([a.pid.remote() for a in backend.actors])
        assert len(set(pids)) == 2  # two processes shared the round

        remote.ended.clear()
        ev = backend.evaluate(remote, global_model, ServerState(1, weights, states), 1)
        assert remote.ended == [c.cid for c in clients]

        def personalize(model, client):
            return strategy.personalize(model, client, states[client.cid], 1)

        serial = evaluate(global_model, SmallCNN(), clients, fed.classes, personalize, 64)
        assert ev.metrics() == serial.metrics()
        cid = clients[0].cid  # personalized in the worker: its own matrices, not the global ones
        assert ev.cms[("test", "personal")][cid] is not ev.cms[("test", "global")][cid]
    finally:
        torch.set_num_threads(before)
    backend.close()
    assert backend.actors == []
