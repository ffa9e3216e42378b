"""The fast path (trainer=fast): the Fabric engine, worker processes, batched evaluation, bf16
fallback and torch.compile, each against the exact path or an independent oracle."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from compose import make_cfg
from plain_loop import same_weights
from sklearn.metrics import confusion_matrix

from pfl import config as cfgmod
from pfl.errors import ConfigError
from pfl.fl import trainer as trainer_mod
from pfl.fl.evaluate import global_confusions
from pfl.fl.trainer import FabricTrainer, LocalModule, build_trainer, resolve_precision
from pfl.run import train


def _run(db, tmp, *over):
    before = torch.get_num_threads()
    try:
        return train(make_cfg(db, tmp, *over))
    finally:
        torch.set_num_threads(before)


def _same_result(a, b) -> None:
    assert same_weights(a.global_weights, b.global_weights)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    keys = [k for k in a.metrics if not k.endswith("round_seconds")]
    assert keys and {k: a.metrics[k] for k in keys} == {k: b.metrics[k] for k in keys}


# Every strategy YAML: automatic optimization (none, fedprox with its penalty, ditto's two
# models), manual optimization (perfedavg, pfedme), evaluation-time fine-tuning, partial sharing.
STRATEGIES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fabric_engine_trains_exactly_like_the_lightning_trainer(synthetic_db, tmp_path, strategy):
    over = (f"strategy={strategy}", "federation.rounds=1", *(("model.norm=batch",) if strategy == "fedbn" else ()))
    a = _run(synthetic_db, tmp_path / "trainer", *over, "trainer.engine=trainer")
    b = _run(synthetic_db, tmp_path / "fabric", *over, "trainer.engine=fabric")
    _same_result(a, b)


def test_fabric_engine_clips_gradients_like_the_trainer(synthetic_db, tmp_path):
    over = ("federation.rounds=1", "trainer.gradient_clip_val=0.01", "federation.optimizer.lr=0.05")
    a = _run(synthetic_db, tmp_path / "trainer", *over, "trainer.engine=trainer")
    b = _run(synthetic_db, tmp_path / "fabric", *over, "trainer.engine=fabric")
    c = _run(synthetic_db, tmp_path / "noclip", "federation.rounds=1", "federation.optimizer.lr=0.05",
             "trainer.engine=fabric")
    _same_result(a, b)
    assert not same_weights(b.global_weights, c.global_weights)  # the clip did something


def test_fabric_fit_counts_steps_like_max_steps_and_max_epochs():
    # 10 rows, batch 4: 3 batches per epoch.
    x, y = torch.randn(10, 1, 8), torch.randint(0, 2, (10,))

    class Loader:
        def __len__(self):
            return 3

        def __iter__(self):
            for i in range(0, 10, 4):
                yield x[i:i + 4], y[i:i + 4]

    def module():
        return LocalModule(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2)),
                           functools.partial(torch.optim.SGD, lr=0.1))

    t = FabricTrainer()
    # Batches of 4, 4 and 2 rows: the steps and beats seen, counted by hand.
    for kw, steps, seen in (({"epochs": 2}, 6, 20), ({"steps": 5}, 5, 18), ({"steps": 7}, 7, 24),
                            ({"epochs": 0}, 0, 0)):
        m = module()
        t.fit(m, Loader(), **kw)
        assert (m.steps, m.seen) == (steps, seen), kw


@pytest.mark.parametrize("strategy, engine", [("none", "trainer"), ("scaffold", "fabric"), ("finetune", "fabric"),
                                              ("fedper", "trainer")])
def test_worker_processes_give_the_serial_results(synthetic_db, tmp_path, strategy, engine):
    # 1 torch thread per worker and in the serial run: the same sums in the same order.
    over = (f"strategy={strategy}", f"trainer.engine={engine}", "trainer.threads=1")
    serial = _run(synthetic_db, tmp_path / "serial", *over)
    parallel = _run(synthetic_db, tmp_path / "workers", *over, "trainer.workers=2")
    _same_result(serial, parallel)


def test_fast_preset_composes_and_runs(synthetic_db, tmp_path):
    cfg = make_cfg(synthetic_db, tmp_path, "trainer=fast", "model=cnn_lstm")
    assert cfg.trainer.engine == "fabric" and cfg.trainer.threads == 1 and cfg.trainer.workers >= 1
    assert cfg.trainer.fused_optimizer is True and cfg.trainer.spread_threads is True
    assert cfg.trainer.precision == "bf16-mixed"
    exact = _run(synthetic_db, tmp_path / "exact", "trainer.threads=1", "trainer.fused_optimizer=true")
    fast = _run(synthetic_db, tmp_path / "fast", "trainer=fast", "trainer.precision=bf16-mixed",
                "trainer.spread_threads=true")
    if resolve_precision("bf16-mixed") == "32-true" and cfg.trainer.workers == 1:  # the same fp32 math
        _same_result(exact, fast)
    else:  # bf16 autocast, or a left-over client on more threads: within the tolerance BENCHMARKS.md states
        assert abs(exact.metrics["test.global.f1.mean"] - fast.metrics["test.global.f1.mean"]) <= 0.02


def test_fast_preset_for_the_small_cnn_is_the_exact_path_with_the_fused_optimizer_bit_for_bit(synthetic_db,
                                                                                              tmp_path):
    """conf/trainer_model/fast_cnn.yaml: with model=cnn, trainer=fast trains in fp32 without spread
    threads, so its weights equal the exact path's at 1 thread with the fused optimizer; with another
    model the keys stay trainer=fast's own, and the command line still wins."""
    cfg = make_cfg(synthetic_db, tmp_path, "trainer=fast")  # tests.compose.FAST: model=cnn
    assert (cfg.trainer.precision, cfg.trainer.spread_threads) == ("32-true", False)
    assert cfg.trainer.fused_optimizer is True and cfg.trainer.workers >= 1
    other = make_cfg(synthetic_db, tmp_path, "trainer=fast", "model=resnet1d")
    assert (other.trainer.precision, other.trainer.spread_threads) == ("bf16-mixed", True)
    asked = make_cfg(synthetic_db, tmp_path, "trainer=fast", "trainer.precision=bf16-mixed")
    assert (asked.trainer.precision, asked.trainer.spread_threads) == ("bf16-mixed", False)
    # only trainer=fast is specialized: the default trainer is the same whatever the model
    assert (make_cfg(synthetic_db, tmp_path, "model=cnn").trainer
            == make_cfg(synthetic_db, tmp_path, "model=cnn_lstm").trainer)
    exact = _run(synthetic_db, tmp_path / "exact", "trainer.threads=1", "trainer.fused_optimizer=true")
    fast = _run(synthetic_db, tmp_path / "fast", "trainer=fast", "trainer.workers=2")
    _same_result(exact, fast)


def test_batched_global_evaluation_equals_per_client_predictions(synthetic_db, tmp_path):
    from pfl.run import load_federation

    cfg = make_cfg(synthetic_db, tmp_path)
    fed = load_federation(cfg)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(fed.clients[0].train.x[0].numel(), 5))
    got = global_confusions(model, fed.clients, 5, batch_size=64)
    n_checked = 0
    for c in fed.clients:
        for split in ("val", "test"):
            sp = c.split(split)
            if not len(sp):
                continue
            with torch.no_grad():
                pred = model(sp.x).argmax(1).numpy()
            want = confusion_matrix(sp.y.numpy(), pred, labels=range(5))
            np.testing.assert_array_equal(got[c.cid][(split, "global")], want)
            n_checked += 1
    assert n_checked >= 2 * len(fed.clients) - 2


def test_bf16_falls_back_to_fp32_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setattr(trainer_mod, "cpu_supports_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pfl.fl.trainer"):
        assert resolve_precision("bf16-mixed", "cpu") == "32-true"
        t = build_trainer(engine="fabric", precision="bf16-mixed")
    assert t.precision == "32-true"
    assert "no native bfloat16" in caplog.text and "32-true" in caplog.text
    monkeypatch.setattr(trainer_mod, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("32-true", "cpu") == "32-true"


def test_bf16_autocast_runs_where_forced():
    # Where the CPU has no native bf16 the forced path is emulated (slow) but must still work.
    t = FabricTrainer(precision="bf16-mixed")
    t.precision = "bf16-mixed"  # bypass the fallback: exercise the autocast path itself
    x, y = torch.randn(64, 1, 16), torch.randint(0, 3, (64,))
    m = LocalModule(torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(56, 3)),
                    functools.partial(torch.optim.SGD, lr=0.1))
    w0 = m.model[0].weight.detach().clone()
    t.fit(m, [(x, y)], epochs=1)
    assert m.model[0].weight.dtype == torch.float32  # mixed: master weights stay fp32
    assert not torch.equal(w0, m.model[0].weight)


def test_compile_happens_once_per_process_and_model():
    import torch._dynamo

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    t = FabricTrainer(compile=True, compile_backend="eager")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.randn(32, 1, 16), torch.randint(0, 3, (32,))
    graphs = []
    for _client in range(3):  # the working model is reused across clients and rounds
        t.fit(LocalModule(model, functools.partial(torch.optim.SGD, lr=0.1)), [(x, y)] * 2, epochs=2)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] >= 1  # it did compile
    assert graphs[1] == graphs[0] and graphs[2] == graphs[0]  # and never again
    assert set(model.state_dict()) == {"1.weight", "1.bias"}  # the weights keep their names
    assert "forward" not in vars(model)  # the compiled forward is not left on the model
    torch._dynamo.reset()


@pytest.mark.parametrize("over, key", [
    (("trainer.engine=lightning",), "trainer.engine"),
    (("trainer.workers=0",), "trainer.workers"),
    (("trainer.engine=trainer", "trainer.compile=true"), "trainer.compile"),
    (("trainer.precision=fp8",), "trainer.precision"),
    (("trainer.workers=2", "federation.backend=ray"), "trainer.workers"),
    (("trainer.fused_optimizer=sometimes",), "trainer.fused_optimizer"),
    (("trainer.spread_threads=2",), "trainer.spread_threads"),
    (("trainer.workers=2", "trainer.threads=2"), "trainer.threads"),  # forked workers would hang
    (("trainer.engine=fabric", "trainer.precision=16-mixed"), "trainer.precision"),
    pytest.param(("trainer=gpu",), "trainer.accelerator",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")),
])
def test_bad_fast_path_settings_are_config_errors(synthetic_db, tmp_path, over, key):
    with pytest.raises(ConfigError) as e:
        cfgmod.validate(make_cfg(synthetic_db, tmp_path, *over))
    assert key in str(e.value)


def test_new_trainer_keys_keep_earlier_config_hashes(synthetic_db, tmp_path):
    base = make_cfg(synthetic_db, tmp_path)
    h = cfgmod.config_hash(base)
    # The engine and the worker count do not change results; compile does, once on.
    assert cfgmod.config_hash(make_cfg(synthetic_db, tmp_path, "trainer.engine=fabric", "trainer.workers=2")) == h
    assert cfgmod.config_hash(make_cfg(synthetic_db, tmp_path, "trainer.compile=true",
                                       "trainer.engine=fabric")) != h
    from omegaconf import OmegaConf

    legacy = OmegaConf.to_container(base)
    assert cfgmod.config_hash(make_cfg(synthetic_db, tmp_path, "trainer.fused_optimizer=true")) != h
    # Spread threads make the worker count part of the result: then it is part of the hash.
    spread = [cfgmod.config_hash(make_cfg(synthetic_db, tmp_path, "trainer.spread_threads=true",
                                          f"trainer.workers={n}")) for n in (1, 2, 3)]
    assert spread[0] == h and len({h, *spread}) == 3
    for k in ("engine", "workers", "compile", "compile_backend", "fused_optimizer", "spread_threads"):
        legacy["trainer"].pop(k)
    assert cfgmod.config_hash(OmegaConf.create(legacy)) == h


def _adam_by_hand(w, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return w


def test_fused_optimizer_asks_for_the_fused_kernel_and_steps_like_adam_by_hand():
    factory = trainer_mod.fused_optimizer(functools.partial(torch.optim.Adam, lr=0.01), True)
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    w0 = lin.weight.detach().double().numpy().copy()
    opt = factory(lin.parameters())
    assert opt.defaults["fused"] is True
    x, y = torch.randn(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    grads = []
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x), y).backward()
        grads.append(lin.weight.grad.double().numpy().copy())
        opt.step()
    np.testing.assert_allclose(lin.weight.detach().double().numpy(), _adam_by_hand(w0, grads, 0.01),
                               rtol=0, atol=1e-6)


def test_fused_optimizer_leaves_what_it_cannot_or_need_not_change(caplog):
    off = functools.partial(torch.optim.Adam, lr=0.01)
    assert trainer_mod.fused_optimizer(off, False) is off
    mine = functools.partial(torch.optim.SGD, lr=0.01, fused=False)  # the config's own choice wins
    assert trainer_mod.fused_optimizer(mine, True) is mine
    rms = functools.partial(torch.optim.RMSprop, lr=0.01)  # no fused kernel: as configured, said once
    with caplog.at_level(logging.INFO, logger="pfl.fl.trainer"):
        assert trainer_mod.fused_optimizer(rms, True) is rms
    assert "RMSprop has no fused implementation" in caplog.text
    for own in ({"foreach": True}, {"differentiable": True}):  # each refuses fused=True alongside
        mine = functools.partial(torch.optim.Adam, lr=0.01, **own)
        assert trainer_mod.fused_optimizer(mine, True) is mine
        mine(torch.nn.Linear(2, 2).parameters())
    sgd = trainer_mod.fused_optimizer(functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9), True)
    opt = sgd(torch.nn.Linear(2, 2).parameters())
    assert opt.defaults["fused"] is True and opt.defaults["momentum"] == 0.9


class _NoFusedKernelHere(torch.optim.SGD):
    """An optimizer whose fused kernel is missing on this device, as torch < 2.4 refuses on CPU."""

    def __init__(self, params, lr=0.01, fused=None):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                               "supported devices: ['cuda', 'xpu'].")
        super().__init__(params, lr=lr)


def test_fused_optimizer_falls_back_where_the_device_has_no_fused_kernel(caplog):
    plain = functools.partial(_NoFusedKernelHere, lr=0.01)
    with caplog.at_level(logging.INFO, logger="pfl.fl.trainer"):
        assert trainer_mod.fused_optimizer(plain, True) is plain
    assert "_NoFusedKernelHere has no fused kernel on cpu here (`fused=True` requires" in caplog.text


def test_a_run_with_the_fused_optimizer_matches_the_loop_up_to_rounding(synthetic_db, tmp_path, monkeypatch):
    built = []
    configure = trainer_mod.LocalModule.configure_optimizers

    def spy(self):
        opt = configure(self)
        built.append(opt.defaults.get("fused"))
        return opt

    monkeypatch.setattr(trainer_mod.LocalModule, "configure_optimizers", spy)
    loop = _run(synthetic_db, tmp_path / "loop", "federation.rounds=2")
    n = len(built)
    fused = _run(synthetic_db, tmp_path / "fused", "federation.rounds=2", "trainer.fused_optimizer=true")
    assert n and not any(built[:n]) and built[n:] and all(built[n:])  # every client's optimizer, fused
    diff = max((loop.global_weights[k].double() - fused.global_weights[k].double()).abs().max().item()
               for k in loop.global_weights)
    assert diff < 1e-4  # the same update up to float rounding (2 rounds on the synthetic records)


@pytest.mark.parametrize("sizes, workers, threads, spread, order, per_call, tail", [
    # the hospitals federation on 2 cores: the smallest client waits, then trains on both
    ([1183, 1274, 680], 2, 1, True, [1, 0, 2], [1, 1, 2], 1),
    ([1183, 1274, 680], 2, 1, False, [1, 0, 2], [1, 1, 1], 0),
    ([5, 9, 2, 7], 2, 1, True, [1, 3, 0, 2], [1, 1, 1, 1], 0),  # the workers take 2 each: no tail
    ([5, 9, 2, 7, 1], 4, 1, True, [1, 3, 0, 2, 4], [1, 1, 1, 1, 4], 1),
    ([5, 9, 2, 7, 1, 3], 4, 1, True, [1, 3, 0, 5, 2, 4], [1] * 6, 0),  # two left over: no tail
    ([8], 2, 1, True, [0], [2], 1),  # one client: all threads, nothing to wait for
    ([8], 1, 1, True, [0], [1], 0),  # one worker: nothing to spread
    ([8, 6], 2, 1, True, [0, 1], [1, 1], 0),
    ([3, 3, 3], 2, 2, True, [0, 1, 2], [2, 2, 4], 1),  # ties keep call order
    ([6, 4, 2], 4, 1, True, [0, 1, 2], [1, 1, 1], 0),
])
def test_thread_plan_gives_the_left_over_client_the_waiting_threads(sizes, workers, threads, spread, order,
                                                                  per_call, tail):
    from pfl.fl.workers import thread_plan

    assert thread_plan(sizes, workers, threads, spread) == (order, per_call, tail)
    if workers == 1 and len(sizes) == 1:  # one worker forked for one client, of 2 cores: both
        assert thread_plan(sizes, 1, 1, spread, cores=2) == ([0], [2], 1)


def _probe(self, seconds):  # what a call sees: its process, its thread count, when it ran
    import os
    import time

    torch.rand(3)  # a draw from torch's RNG: the run's process must not see it move
    start = time.monotonic()
    time.sleep(seconds)
    return os.getpid(), torch.get_num_threads(), start, time.monotonic()


@pytest.mark.parametrize("spread", [True, False])
def test_the_tail_runs_here_after_the_rest_on_their_threads(monkeypatch, spread):
    import os

    from pfl.fl.server import Workload
    from pfl.fl.workers import ProcessBackend, WorkerCore

    monkeypatch.setattr(WorkerCore, "probe", _probe, raising=False)  # the forked workers inherit it
    backend = ProcessBackend(2, threads=1, spread_threads=spread)
    # two clients, so that both workers start (the probe calls name none)
    backend.bind(Workload(strategy=None, model_factory=torch.nn.Identity, clients={"a": None, "b": None},
                          n_classes=5, eval_batch_size=8))
    before, rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        backend.start()
        seconds = [0.3, 0.9, 0.1]
        got = list(backend._in_order([("probe", None, (s,)) for s in seconds], sizes=[3, 9, 1]))
    finally:
        backend.close()
    assert torch.get_num_threads() == before  # this process's threads restored
    assert torch.equal(torch.get_rng_state(), rng)  # and its RNG stream
    here = [pid == os.getpid() for pid, *_ in got]
    assert here == ([False, False, True] if spread else [False, False, False])
    assert [g[1] for g in got] == ([1, 1, 2] if spread else [1, 1, 1])
    for (*_, start, end), s in zip(got, seconds, strict=True):  # results come back in call order
        assert end - start >= s
    if spread:  # the smallest call waited for the 0.9 s one
        assert got[2][2] >= got[1][3]


def _boom(self):
    raise ValueError("client cannot train")


def test_a_worker_error_stops_the_batch_the_tail_never_runs_and_fresh_workers_follow(monkeypatch):
    import os
    import time

    from pfl.fl.server import Workload
    from pfl.fl.workers import ProcessBackend, WorkerCore

    monkeypatch.setattr(WorkerCore, "probe", _probe, raising=False)
    monkeypatch.setattr(WorkerCore, "boom", _boom, raising=False)
    ran_here: list = []
    monkeypatch.setattr(ProcessBackend, "_run_here", lambda self, call, threads: ran_here.append(call))
    backend = ProcessBackend(2, threads=1, spread_threads=True)
    backend.bind(Workload(strategy=None, model_factory=torch.nn.Identity, clients={"a": None, "b": None},
                          n_classes=5, eval_batch_size=8))
    try:
        backend.start()
        with pytest.raises(ValueError, match="cannot train"):
            list(backend._in_order([("probe", None, (0.2,)), ("boom", None, ()), ("probe", None, (0.0,))],
                                   sizes=[3, 9, 1]))
        assert ran_here == [] and not backend.procs  # the workers, maybe mid-call, are stopped
        # A later batch starts fresh workers and reads its own results, not the stopped batch's.
        backend.start()
        t0 = time.monotonic()
        got = list(backend._in_order([("probe", None, (0.05,)), ("probe", None, (0.01,))], sizes=[1, 1]))
        assert all(start >= t0 for _, _, start, _ in got)  # a stale result started before t0
        assert os.getpid() not in [g[0] for g in got]
    finally:
        backend.close()


def _tensors(self, n):
    return {"w": torch.arange(n, dtype=torch.float32), "b": torch.ones(2)}


def _unpicklable(self):
    return lambda: None


def test_tensors_cross_to_and_from_workers_by_value_and_an_unpicklable_result_is_an_error(monkeypatch):
    """Calls and results travel as plain pickles: a tensor arrives as a copy in ordinary memory,
    not in a shared-memory segment passed by file descriptor (the Connection's own pickler once
    torch.multiprocessing is imported, ~30 ms a round trip); a result that cannot be pickled
    comes back as an error naming it (not as a worker that died)."""
    from pfl.fl.server import Workload
    from pfl.fl.workers import ProcessBackend, WorkerCore

    monkeypatch.setattr(WorkerCore, "tensors", _tensors, raising=False)
    monkeypatch.setattr(WorkerCore, "unpicklable", _unpicklable, raising=False)
    backend = ProcessBackend(2, threads=1)
    backend.bind(Workload(strategy=None, model_factory=torch.nn.Identity, clients={"a": None, "b": None},
                          n_classes=5, eval_batch_size=8))
    try:
        backend.start()
        got = list(backend._in_order([("tensors", None, (5,)), ("tensors", None, (3,))], sizes=[1, 1]))
        assert [g["w"].tolist() for g in got] == [[0, 1, 2, 3, 4], [0, 1, 2]]
        assert not any(t.is_shared() for g in got for t in g.values())
        with pytest.raises(Exception, match="pickle"):
            list(backend._in_order([("unpicklable", None, ())], sizes=[1]))
    finally:
        backend.close()


@pytest.mark.parametrize("strategy", ["none", "finetune"])  # finetune: personalization trains in the tail too
def test_spread_threads_trains_like_the_serial_run_up_to_rounding_and_reruns_alike(synthetic_db, tmp_path, strategy,
                                                                                  monkeypatch):
    from pfl.fl.workers import ProcessBackend

    here: list[tuple[str, int]] = []
    run_here = ProcessBackend._run_here

    def spy(self, call, threads):
        here.append((call[0], threads))
        return run_here(self, call, threads)

    monkeypatch.setattr(ProcessBackend, "_run_here", spy)
    # 5 patients on 2 workers: one left over each round
    over = ("trainer.threads=1", "federation.rounds=2", "trainer.engine=fabric", f"strategy={strategy}",
            "partition.records=[s01,s02,s03,s04,s05]")
    serial = _run(synthetic_db, tmp_path / "serial", *over)
    assert not here
    spread = [_run(synthetic_db, tmp_path / f"spread{i}", *over, "trainer.workers=2", "trainer.spread_threads=true")
              for i in range(2)]
    # each round's left-over update (2 rounds x 2 runs; with fine-tuning, personalization too)
    # ran here on 2 threads
    assert [c for c in here if c[0] == "update"] == [("update", 2)] * 4 and {t for _, t in here} == {2}
    if strategy == "finetune":
        assert ("evaluate", 2) in here
    _same_result(spread[0], spread[1])
    diff = max(float((serial.global_weights[k] - spread[0].global_weights[k]).abs().max())
               for k in serial.global_weights)
    assert diff < 1e-4


def test_the_patched_lightning_loader_still_matches_lightnings_own():
    # ClientTrainer replaces Lightning's private external-callback loader with one that scans
    # entry points once per process. If Lightning renames or changes it, this fails.
    import inspect

    from pytorch_lightning.trainer.connectors import callback_connector

    trainer_mod.cache_callback_discovery()
    patched = callback_connector._load_external_callbacks
    assert patched is trainer_mod._external_callbacks
    original = callback_connector.__dict__.get("_pfl_original_load_external_callbacks")
    assert original is not None and list(inspect.signature(original).parameters) == ["group"]
    for group in ("pytorch_lightning.callbacks_factory", "lightning.pytorch.callbacks_factory"):
        assert [type(c) for c in patched(group)] == [type(c) for c in original(group)]


def test_bench_gpu_skips_with_a_reason_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the benchmark would run")
    from bench import main

    assert main(["--gpu"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "no CUDA GPU" in out


def test_a_worker_error_reaches_the_run_as_one_clear_error(synthetic_db, tmp_path, monkeypatch):
    from pfl.errors import PflError
    from pfl.strategies.base import Strategy

    def fail(self, model, client, state, rnd):  # the forked workers inherit the patch
        raise PflError(f"client {client.cid} cannot train")

    monkeypatch.setattr(Strategy, "local_update", fail)
    with pytest.raises(PflError, match="cannot train"):
        _run(synthetic_db, tmp_path, "trainer.workers=2", "federation.rounds=1")


def test_worker_exceptions_that_do_not_pickle_still_say_what_happened():
    from pfl.errors import ConfigError, PflError
    from pfl.fl.workers import _portable

    class Odd(Exception):
        def __init__(self, a, b):
            super().__init__(f"{a}/{b}")

    e = _portable(Odd(1, 2))
    assert isinstance(e, RuntimeError) and "Odd: 1/2" in str(e)
    ce = _portable(ConfigError("federation.batch_size", 0, "an integer >= 1"))
    assert isinstance(ce, PflError) and "federation.batch_size" in str(ce)


def test_test_split_only_where_reported(synthetic_db, tmp_path):
    # Val every round (model selection reads it), test every 2nd round and after the last.
    every = _run(synthetic_db, tmp_path / "every", "federation.rounds=3")
    sparse = _run(synthetic_db, tmp_path / "sparse", "federation.rounds=3", "federation.test_every=2")
    has_test = [any(k.startswith("test.") for k in h) for h in sparse.history]
    assert has_test == [False, True, True]
    assert all("val.global.f1.mean" in h for h in sparse.history)
    assert all(any(k.startswith("test.") for k in h) for h in every.history)
    _same_result(every, sparse)  # training is untouched; the final evaluation is complete
    for a, b in zip(every.history, sparse.history, strict=True):
        assert {k: v for k, v in a.items() if k.startswith("val.")} == {k: v for k, v in b.items()
                                                                        if k.startswith("val.")}


def test_bf16_training_evaluates_under_bf16_autocast_and_fp32_otherwise():
    """Two logits 2^-10 apart: fp32 tells them apart (class 1), bfloat16's 8-bit mantissa rounds
    them equal (argmax takes class 0), so the prediction says which precision ran."""
    from pfl.metrics import predict, set_inference_precision

    model = torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [1.0 + 2 ** -10]]))
    x = torch.ones(4, 1)
    try:
        set_inference_precision("bf16-mixed")
        assert predict(model, x).tolist() == [0, 0, 0, 0]
        set_inference_precision("32-true")
        assert predict(model, x).tolist() == [1, 1, 1, 1]
    finally:
        set_inference_precision("32-true")


def test_a_run_evaluates_in_its_own_precision_and_leaves_the_process_as_it_found_it(synthetic_db, tmp_path):
    from pfl.fl.callbacks import Callback
    from pfl.metrics import get_inference_precision, set_inference_precision

    seen = []

    class Probe(Callback):
        def on_round_end(self, info):
            seen.append(get_inference_precision())

    set_inference_precision("bf16-mixed")  # left by an earlier run of this process
    try:
        train(make_cfg(synthetic_db, tmp_path, "federation.rounds=1", "logger=none"), callbacks=[Probe()])
        assert seen == ["32-true"]  # this run's own precision (the default)
        assert get_inference_precision() == "bf16-mixed"  # restored afterwards
    finally:
        set_inference_precision("32-true")
