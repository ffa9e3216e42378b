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


def test_ray_workers_train_and_evaluate_like_the_serial_backend(synthetic_db, tmp_path, ray_local):
    import functools

    from pfl import config as cfgmod
    from pfl.fl.evaluate import Evaluation, add_client, evaluate
    from pfl.fl.ray_backend import RayBackend
    from pfl.fl.server import SerialBackend, Workload
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
        # A backend gets the workload once and never sees a server.
        workload = Workload(strategy, SmallCNN, {c.cid: c for c in clients}, len(fed.classes), 64)
        backend.bind(workload)
        got = list(backend.local_updates(SmallCNN(), clients, weights, states, 1, strategy.state_dict()))
        serial = SerialBackend()
        serial.bind(workload)
        want = list(serial.local_updates(SmallCNN(), clients, weights, states, 1, strategy.state_dict()))
        # Updates come back in client order although the two workers finish in any order.
        assert [u.cid for u in got] == [c.cid for c in clients] == [u.cid for u in want]
        for a, b in zip(got, want, strict=True):
            assert a.num_samples == b.num_samples and a.metrics == b.metrics
            assert all(torch.equal(a.weights[k], b.weights[k]) for k in b.weights)
        pids = ray_local.get([a.pid.remote() for a in backend.actors])
        assert len(set(pids)) == 2  # two processes shared the round

        ev = Evaluation(fed.classes, list(clients))
        for c, cms in zip(clients, backend.evaluate(weights, states, 1, ("val", "test"), clients), strict=True):
            add_client(ev, c, cms)

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
