"""The zoo's math: each strategy's local update and server step on a tiny softmax classifier
against the same steps done by hand in numpy, plus every strategy end to end on synthetic data."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from compose import make_cfg
from rich.console import Console
from torch import nn

from pfl.data.types import Client, Split
from pfl.fl.trainer import ClientTrainer
from pfl.strategies import Context, build_strategy
from pfl.strategies.registry import config_names

LR, STEPS = 0.1, 2


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _grad(p, x, y, offset=0.0):
    """Gradients of mean cross-entropy of softmax(body(x) -> head + offset) for the two-layer
    linear net {"body.weight", "body.bias", "head.weight", "head.bias"}, by hand."""
    h = x @ p["body.weight"].T + p["body.bias"]
    q = _softmax(h @ p["head.weight"].T + p["head.bias"] + offset)
    q[np.arange(len(y)), y] -= 1
    q /= len(y)
    dh = q @ p["head.weight"]
    return {"head.weight": q.T @ h, "head.bias": q.sum(0), "body.weight": dh.T @ x, "body.bias": dh.sum(0)}


class Net(nn.Module):
    def __init__(self, classes: int = 2):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Linear(4, classes)

    def forward(self, x):
        return self.head(self.body(x))


def _np(weights):
    return {k: v.detach().numpy().copy() for k, v in weights.items()}


def _client(seed: int, n: int = 6) -> Client:
    rng = np.random.default_rng(seed)
    x, y = torch.tensor(rng.normal(size=(n, 3))), torch.tensor(rng.integers(0, 2, size=n))
    return Client(f"c{seed}", Split(x, y), Split(x[:2], y[:2]), Split(x[:2], y[:2]))


def _setup(name: str, n_clients: int = 2, factory=Net, **hparams):
    torch.manual_seed(0)
    strategy = build_strategy({"name": name, **hparams})
    # Full-batch SGD: every step sees the whole (6-beat) split, so the order of beats is moot.
    strategy.bind(Context(trainer=ClientTrainer(), optimizer=functools.partial(torch.optim.SGD, lr=LR), lr=LR,
                          batch_size=64, local_epochs=1, seed=0, local_steps=STEPS, model_factory=factory,
                          n_clients=n_clients))
    model = factory()
    return strategy, model, {k: v.clone() for k, v in model.state_dict().items()}


def _sgd(p, x, y, steps=STEPS, lr=LR, extra=lambda p: {}):
    p = {k: v.copy() for k, v in p.items()}
    for _ in range(steps):
        g, e = _grad(p, x, y), extra(p)
        p = {k: p[k] - lr * (g[k] + e.get(k, 0.0)) for k in p}
    return p


def _close(a, b):
    for k in b:
        np.testing.assert_allclose(np.asarray(a[k]), b[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_fedprox_steps_on_the_proximal_objective():
    mu = 0.7
    strategy, model, w0 = _setup("fedprox", mu=mu)
    c = _client(1)
    start = _np(w0)
    update = strategy.local_update(model, c, {}, rnd=1)
    expected = _sgd(start, c.train.x.numpy(), c.train.y.numpy(), extra=lambda p: {k: mu * (p[k] - start[k]) for k in p})
    _close(_np(update.weights), expected)


def test_scaffold_corrects_steps_updates_control_variates_and_the_server():
    strategy, model, w0 = _setup("scaffold", n_clients=4, lr=LR, global_lr=0.5)
    strategy.server_state = strategy.init_server_state(w0)
    rng = np.random.default_rng(5)
    c_server = {k: rng.normal(size=v.shape) for k, v in w0.items()}
    c_client = {k: rng.normal(size=v.shape) for k, v in w0.items()}
    strategy.server_state["c"] = {k: torch.tensor(v) for k, v in c_server.items()}
    x0 = _np(w0)
    updates, expected_y, expected_ci = [], [], []
    for seed, ci in ((1, c_client), (2, None)):
        cl = _client(seed)
        state = {} if ci is None else {"c_i": {k: torch.tensor(v) for k, v in ci.items()}}
        ci = ci or {k: np.zeros_like(v) for k, v in x0.items()}
        model.load_state_dict(w0)
        updates.append(strategy.local_update(model, cl, state, rnd=1))
        y = _sgd(x0, cl.train.x.numpy(), cl.train.y.numpy(), extra=lambda p, ci=ci: {k: c_server[k] - ci[k] for k in p})
        expected_y.append(y)
        # Option II: c_i+ = c_i - c + (x - y) / (K lr)
        expected_ci.append({k: ci[k] - c_server[k] + (x0[k] - y[k]) / (STEPS * LR) for k in x0})
        _close(_np(updates[-1].weights), y)
        _close(_np(updates[-1].state["c_i"]), expected_ci[-1])
        _close({k.removeprefix("delta_c."): v.numpy() for k, v in updates[-1].extra.items()},
               {k: expected_ci[-1][k] - ci[k] for k in x0})
    out = strategy.aggregate(w0, updates)
    n = [6, 6]
    mean_y = {k: np.average([y[k] for y in expected_y], axis=0, weights=n) for k in x0}
    _close(_np(out), {k: x0[k] + 0.5 * (mean_y[k] - x0[k]) for k in x0})
    deltas = [{k: expected_ci[0][k] - c_client[k] for k in x0}, {k: expected_ci[1][k] for k in x0}]
    _close(_np(strategy.server_state["c"]),
           {k: c_server[k] + 2 / 4 * np.average([d[k] for d in deltas], axis=0, weights=n) for k in x0})


def test_ditto_trains_a_personal_model_on_the_proximal_objective_and_fedavg_on_the_global():
    lam = 0.3
    strategy, model, w0 = _setup("ditto", lam=lam)
    c = _client(3)
    x, y = c.train.x.numpy(), c.train.y.numpy()
    start = _np(w0)
    update = strategy.local_update(model, c, {}, rnd=1)
    _close(_np(update.weights), _sgd(start, x, y))
    personal = _sgd(start, x, y, extra=lambda p: {k: lam * (p[k] - start[k]) for k in p})
    _close(_np(update.state["personal"]), personal)
    # Evaluated with the personal model, not the global one.
    model.load_state_dict(w0)
    _close(_np(strategy.personal_model(model, c, update.state, rnd=1).state_dict()), personal)


def test_pfedme_solves_the_moreau_subproblem_then_moves_the_local_global_copy():
    lam, k, plr, eta = 2.0, 3, 0.05, 0.1
    strategy, model, w0 = _setup("pfedme", lam=lam, k=k, personal_lr=plr, eta=eta, server_beta=0.5)
    c = _client(4)
    x, y = c.train.x.numpy(), c.train.y.numpy()
    w = _np(w0)
    for _ in range(STEPS):
        theta = {n: v.copy() for n, v in w.items()}
        for _ in range(k):
            g = _grad(theta, x, y)
            theta = {n: theta[n] - plr * (g[n] + lam * (theta[n] - w[n])) for n in w}
        w = {n: w[n] - eta * lam * (w[n] - theta[n]) for n in w}
    update = strategy.local_update(model, c, {}, rnd=1)
    _close(_np(update.weights), w)
    _close(_np(update.state["personal"]), theta)
    # Server: w <- (1 - beta) w + beta * mean(w_i), here one client.
    _close(_np(strategy.aggregate(w0, [update])), {n: 0.5 * _np(w0)[n] + 0.5 * w[n] for n in w})


def test_apfl_steps_the_global_copy_the_personal_model_and_the_mixing_weight():
    a0 = 0.25
    strategy, model, w0 = _setup("apfl", alpha=a0, adaptive=True)
    c = _client(6)
    x, y = c.train.x.numpy(), c.train.y.numpy()
    rng = np.random.default_rng(9)
    w, a = _np(w0), a0
    v = {n: t + 0.1 * rng.normal(size=t.shape) for n, t in w.items()}  # a personal model apart from w
    state = {"personal": {n: torch.tensor(t) for n, t in v.items()}, "mix": a0}
    for _ in range(STEPS):
        mix = {n: a * v[n] + (1 - a) * w[n] for n in w}
        gw, gm = _grad(w, x, y), _grad(mix, x, y)
        ga = sum((gm[n] * (v[n] - w[n])).sum() for n in w)  # d f(mix) / d alpha
        w = {n: w[n] - LR * gw[n] for n in w}
        v = {n: v[n] - LR * a * gm[n] for n in v}
        a = float(np.clip(a - LR * ga, 0, 1))
    update = strategy.local_update(model, c, state, rnd=1)
    _close(_np(update.weights), w)
    _close(_np(update.state["personal"]), v)
    assert update.state["mix"] == pytest.approx(a, abs=1e-12)
    # Evaluated with the mixture a v + (1 - a) w_global.
    model.load_state_dict(w0)
    personal = _np(strategy.personal_model(model, c, update.state, rnd=1).state_dict())
    _close(personal, {n: a * v[n] + (1 - a) * _np(w0)[n] for n in w})


def _fedrod_by_hand(p, x, y, generic_loss, personal_steps=0, seen=False):
    """FedRoD on a linear body and head by full-batch SGD: `personal_steps` of the personal head
    alone (zero at the start), then STEPS joint steps: the shared net on balanced softmax (log
    class counts added to the logits) or plain CE, the personal head on CE of the detached
    generic logits plus its own (with `seen`, over the classes the client has only)."""
    k = p["head.bias"].shape[0]
    counts = np.bincount(y, minlength=k)
    with np.errstate(divide="ignore"):
        log_counts = np.log(counts.astype(float)) if generic_loss == "balanced" else 0.0
    mask = np.where(counts > 0, 0.0, -np.inf) if seen else 0.0
    ph = {"weight": np.zeros((k, p["head.weight"].shape[1])), "bias": np.zeros(k)}
    for step in range(personal_steps + STEPS):
        h = x @ p["body.weight"].T + p["body.bias"]
        logits = h @ p["head.weight"].T + p["head.bias"]
        g = _grad(p, x, y, offset=log_counts)
        r = _softmax(logits + h @ ph["weight"].T + ph["bias"] + mask)
        r[np.arange(len(y)), y] -= 1
        r /= len(y)
        if step >= personal_steps:
            p = {k: p[k] - LR * g[k] for k in p}
        ph = {"weight": ph["weight"] - LR * r.T @ h, "bias": ph["bias"] - LR * r.sum(0)}
    return p, ph


@pytest.mark.parametrize("generic_loss, personal_epochs", [("balanced", 0), ("criterion", 0), ("balanced", 2)])
def test_fedrod_trains_the_shared_net_on_balanced_softmax_and_a_personal_head_on_the_sum(generic_loss,
                                                                                       personal_epochs):
    strategy, model, w0 = _setup("fedrod", generic_loss=generic_loss, personal_epochs=personal_epochs)
    c = _client(3, n=9)
    x, y = c.train.x.numpy(), c.train.y.numpy()
    assert 0 < y.sum() < len(y)  # both classes, unequal counts: the offset matters
    # One full batch per epoch: personal_epochs personal-head steps first.
    p, ph = _fedrod_by_hand(_np(w0), x, y, generic_loss, personal_steps=personal_epochs)
    update = strategy.local_update(model, c, {}, rnd=1)
    _close(_np(update.weights), p)  # the whole shared net is sent
    _close(_np(update.state["personal"]), ph)
    # Evaluated with body -> generic head + personal head, the generic part the global model's.
    model.load_state_dict(w0)
    personal = strategy.personal_model(model, c, update.state, rnd=1)
    g = _np(w0)
    h = x @ g["body.weight"].T + g["body.bias"]
    expected = h @ g["head.weight"].T + g["head.bias"] + h @ ph["weight"].T + ph["bias"]
    with torch.no_grad():
        np.testing.assert_allclose(personal(c.train.x).numpy(), expected, rtol=1e-9, atol=1e-12)


def test_fedrod_seen_trains_the_personal_head_among_the_classes_the_client_has():
    strategy, model, w0 = _setup("fedrod", factory=functools.partial(Net, 3), personal_classes="seen",
                                 personal_epochs=1)
    c = _client(5, n=9)  # classes 0 and 1 of three: class 2 never seen
    x, y = c.train.x.numpy(), c.train.y.numpy()
    assert 0 < y.sum() < len(y)
    p, ph = _fedrod_by_hand(_np(w0), x, y, "balanced", personal_steps=1, seen=True)
    update = strategy.local_update(model, c, {}, rnd=1)
    _close(_np(update.weights), p)
    _close(_np(update.state["personal"]), ph)
    # The unseen class's personal logit is exactly 0: the generic head alone decides it...
    assert not update.state["personal"]["weight"][2].any() and update.state["personal"]["bias"][2] == 0
    assert ph["weight"][:2].any()  # ...while the seen classes' rows did learn
    model.load_state_dict(w0)
    with torch.no_grad():
        personal = strategy.personal_model(model, c, update.state, rnd=1)(c.train.x)
        generic = Net(3).requires_grad_(False)
        generic.load_state_dict(w0)
        np.testing.assert_array_equal(personal[:, 2].numpy(), generic(c.train.x)[:, 2].numpy())


def test_fedrod_gives_a_class_the_client_lacks_no_generic_gradient():
    strategy, model, w0 = _setup("fedrod")
    c = _client(4, n=8)
    c = Client(c.cid, Split(c.train.x, torch.zeros_like(c.train.y)), c.val, c.test)  # class 0 only
    x, y = c.train.x.numpy(), c.train.y.numpy()
    update = strategy.local_update(model, c, {}, rnd=1)
    w = _np(update.weights)
    assert all(np.isfinite(t).all() for t in w.values())
    # Balanced softmax: probability 0 for the absent class, so its row of the head never moves...
    np.testing.assert_array_equal(w["head.weight"][1], w0["head.weight"][1].numpy())
    assert w["head.bias"][1] == w0["head.bias"][1].item()
    # ...and with one class left the generic loss is 0: the shared net does not move at all.
    _close(w, _np(w0))
    # The personal head alone learns that this patient's beats are class 0, on fixed features.
    g = _np(w0)
    h = x @ g["body.weight"].T + g["body.bias"]
    ph = {"weight": np.zeros((2, 4)), "bias": np.zeros(2)}
    for _ in range(STEPS):
        r = _softmax(h @ g["head.weight"].T + g["head.bias"] + h @ ph["weight"].T + ph["bias"])
        r[:, 0] -= 1
        r /= len(y)
        ph = {"weight": ph["weight"] - LR * r.T @ h, "bias": ph["bias"] - LR * r.sum(0)}
    _close(_np(update.state["personal"]), ph)
    assert ph["bias"][1] < 0 < ph["bias"][0]


def test_fedrod_names_a_head_the_model_lacks():
    from pfl.errors import ConfigError

    strategy, _, _ = _setup("fedrod", head="classifier.")
    with pytest.raises(ConfigError, match=r"strategy.head='classifier.'.*a submodule of the model: body., head."):
        strategy.check_client(_client(1))


def test_fedrod_refuses_a_head_the_model_calls_twice():
    from pfl.errors import ConfigError

    class Twice(Net):
        def forward(self, x):
            return self.head(self.body(x)) + self.head(self.body(x))

    strategy, _, _ = _setup("fedrod", factory=Twice)
    with pytest.raises(ConfigError, match=r"strategy.head='head.'.*calls it 2 times"):
        strategy.check_client(_client(1))


@pytest.mark.parametrize("name, local", [("fedper", "head."), ("fedrep", "head."), ("lgfedavg", "body.")])
def test_split_strategies_send_and_average_only_the_shared_part(name, local):
    strategy, model, w0 = _setup(name)
    updates = []
    for seed in (1, 2):
        model.load_state_dict(w0)
        updates.append(strategy.local_update(model, _client(seed, n=4 + 4 * seed), {}, rnd=1))
    for u in updates:
        assert set(u.weights) == {k for k in w0 if not k.startswith(local)}
        assert set(u.state["local"]) == {k for k in w0 if k.startswith(local)}
    out = strategy.aggregate(w0, updates)
    for k in w0:
        if k.startswith(local):  # never averaged: the global copy keeps its initial value
            np.testing.assert_array_equal(out[k].numpy(), w0[k].numpy())
        else:
            expected = (8 * updates[0].weights[k].numpy() + 12 * updates[1].weights[k].numpy()) / 20
            np.testing.assert_allclose(out[k].numpy(), expected, rtol=1e-12)
    # Next round each client starts from the new shared part and its own local part.
    model.load_state_dict(out)
    strategy.restore_local(model, updates[1].state)
    for k, t in model.state_dict().items():
        src = updates[1].state["local"][k] if k.startswith(local) else out[k]
        np.testing.assert_array_equal(t.numpy(), src.numpy())


def test_local_sends_nothing_and_trains_on_its_own_model_round_after_round():
    strategy, model, w0 = _setup("local")
    c = _client(8)
    x, y = c.train.x.numpy(), c.train.y.numpy()
    first = strategy.local_update(model, c, {}, rnd=1)
    assert first.weights == {} and first.bytes_sent == 0
    assert strategy.aggregate(w0, [first]).keys() == w0.keys()
    assert all(torch.equal(strategy.aggregate(w0, [first])[k], w0[k]) for k in w0)
    # Round 2 starts from the client's own weights, not the (unchanged) global ones.
    model.load_state_dict(w0)
    second = strategy.local_update(model, c, first.state, rnd=2)
    _close(_np(second.state["local"]), _sgd(_sgd(_np(w0), x, y), x, y))


def test_fedrep_trains_the_head_with_the_body_frozen_then_the_body_with_the_head_frozen():
    strategy, model, w0 = _setup("fedrep", head_epochs=1)
    c = _client(7)
    x, y = c.train.x.numpy(), c.train.y.numpy()
    p = _np(w0)
    g = _grad(p, x, y)  # head_epochs=1 over a full batch: one head step
    p = {k: p[k] - LR * g[k] if k.startswith("head.") else p[k] for k in p}
    for _ in range(STEPS):
        g = _grad(p, x, y)
        p = {k: p[k] - LR * g[k] if k.startswith("body.") else p[k] for k in p}
    update = strategy.local_update(model, c, {}, rnd=1)
    _close({**_np(update.weights), **_np(update.state["local"])}, p)


# --- every registered strategy, end to end on the synthetic database -------------------------


@pytest.mark.parametrize("name", [n for n in config_names() if n != "perfedavg_quick"])
def test_every_strategy_runs_and_reports_the_models_it_has(synthetic_db, tmp_path, name):
    from pfl.run import train

    torch.set_default_dtype(torch.float32)
    extra = ["model=cnn_lstm_bn"] if name == "fedbn" else []
    # Every strategy on the richest input: both leads and the RR features (issue 16); the
    # beat-only input runs through every strategy in the equivalence and math tests.
    extra += ["data.features=[beat,rr]", "data.extra_leads=[other]"]
    # and augmented training batches: every strategy's training loops take them from the loader
    extra += ["augment=ecg"]
    from mlflow.tracking import MlflowClient

    from pfl.tracking import store_uri

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    strategy = build_strategy({"name": name})
    # Tracked for FedAvg and for every strategy without a global model (the path that differs).
    tracked = name == "none" or not strategy.has_global
    logger = ["logger=mlflow", f"logger.tracking_uri={uri}", "study=zoo"] if tracked else []
    # With the progress display on (as `pfl` runs in a terminal): its round note reads the
    # metrics each strategy has.
    cfg = make_cfg(synthetic_db, tmp_path, f"strategy={name}", "federation.rounds=1", "trainer.progress=true",
                   *logger, *extra)
    out = io.StringIO()
    result = train(cfg, console=Console(file=out, width=200))
    m = result.metrics
    accs = [f"{100 * m[k]:.2f}" for k in ("test.global.acc.mean", "test.personal.acc.mean") if k in m]
    assert "test acc " + " -> ".join(accs) in out.getvalue()
    f1 = np.array([m[f"client.s0{i}.test.personal.f1"] for i in range(1, 7)])
    assert np.isfinite(f1).all() and m["test.personal.f1.mean"] == pytest.approx(f1.mean())
    assert ("test.global.f1.mean" in m) == strategy.has_global, sorted(k for k in m if ".global." in k)[:5]
    if strategy.has_global:  # two lead channels in, the RR branch over the six default features
        w = result.global_weights
        assert w["features.0.weight"].shape[1] == 2 and w["rr.net.0.weight"].shape[1] == 6
    if not tracked:
        return
    # Tracked to the end: confusion matrices of the models it has, a servable model iff global.
    client = MlflowClient(tracking_uri=store_uri(uri))
    exp = client.get_experiment_by_name("zoo").experiment_id
    (run,) = client.search_runs([exp])
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    assert "confusion_test.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # MLflow 3 keeps a logged model beside the run (runs:/<id>/model resolves to it).
    logged = client.search_logged_models([exp])
    assert [lm.source_run_id for lm in logged] == ([run.info.run_id] if strategy.has_global else [])


@pytest.mark.parametrize("name", ["none", "fedper", "scaffold"])
def test_communication_bytes_are_the_sizes_of_what_is_exchanged(synthetic_db, tmp_path, name):
    """Per client and round, counted by hand from the small CNN's layers (float32 = 4 bytes)."""
    from pfl.run import train

    torch.set_default_dtype(torch.float32)
    conv = [16 * 1 * 7 + 16, 32 * 16 * 5 + 32, 32 * 32 * 3 + 32]
    head = 32 * 5 + 5
    body, total = sum(conv), sum(conv) + head
    sent = {"none": total, "fedper": body, "scaffold": 2 * total}[name]  # SCAFFOLD adds its control delta
    received = {"none": total, "fedper": body, "scaffold": 2 * total}[name]  # and the server's control variate
    result = train(make_cfg(synthetic_db, tmp_path, f"strategy={name}", "data.records=[s01,s02]",
                            "federation.rounds=1"))
    last = result.history[-1]
    assert last["bytes_sent_per_client"] == 4 * sent and last["bytes_received_per_client"] == 4 * received
