"""The math of each strategy against hand computations on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pfl.data.types import Split
from pfl.fl.aggregate import fedavg
from pfl.fl.batches import BatchLoader
from pfl.fl.trainer import ClientTrainer
from pfl.strategies.perfedavg import MetaModule, meta_gradient


@pytest.fixture(autouse=True, scope="module")
def _float64():
    # Set here, not at import: pytest imports every test module before running any, so an
    # import-time default would make every test that runs before this module train in float64.
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_fedavg_is_the_sample_weighted_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(4.0), "count": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor(0.0), "count": torch.tensor(9)}
    out = fedavg([a, b], [1, 3])
    assert torch.allclose(out["w"], torch.tensor([2.5, 5.0]))
    assert torch.allclose(out["b"], torch.tensor(1.0))
    assert out["count"].item() == 7  # integer buffers are not averaged
    with pytest.raises(ValueError):
        fedavg([], [])


# --- Per-FedAvg on a linear softmax classifier, computed by hand in numpy ---------------------


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _grad(W, b, x, y):
    """d/dW, d/db of mean cross-entropy of softmax(x W^T + b)."""
    p = _softmax(x @ W.T + b)
    p[np.arange(len(y)), y] -= 1
    return p.T @ x / len(y), p.mean(0)


def _hvp(W, b, x, vW, vb):
    """Exact Hessian-vector product of mean cross-entropy, by hand: d/de grad(W + e vW, b + e vb)."""
    p = _softmax(x @ W.T + b)
    dz = x @ vW.T + vb  # (n, k) change of logits along v
    dp = p * dz - p * (p * dz).sum(1, keepdims=True)  # (diag(p) - p p^T) dz per sample
    return dp.T @ x / len(x), dp.mean(0)


def _batches(rng, n=4):
    return [(rng.normal(size=(n, 3)), rng.integers(0, 2, size=n)) for _ in range(3)]


def _model(W, b):
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(W))
        m.bias.copy_(torch.tensor(b))
    return m


class _Once:
    """A loader yielding one given meta-batch (a list would read as several dataloaders)."""

    def __init__(self, item):
        self.item = item

    def __iter__(self):
        yield self.item

    def __len__(self):
        return 1


def _torch_batches(batches):
    return [(torch.tensor(x), torch.tensor(y)) for x, y in batches]


@pytest.mark.parametrize("variant, hvp", [("fo", "exact"), ("hf", "fd"), ("hf", "exact")])
def test_perfedavg_meta_step_matches_hand_computation(variant, hvp):
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(2, 3)), rng.normal(size=2)
    batches = _batches(rng)
    alpha, beta, delta = 0.05, 0.1, 1e-4

    gW1, gb1 = _grad(W, b, *batches[0])
    Wt, bt = W - alpha * gW1, b - alpha * gb1
    gW2, gb2 = _grad(Wt, bt, *batches[1])
    if variant == "hf" and hvp == "fd":
        # The paper's finite-difference Hessian-vector product at w along g, on the third batch.
        gWp, gbp = _grad(W + delta * gW2, b + delta * gb2, *batches[2])
        gWm, gbm = _grad(W - delta * gW2, b - delta * gb2, *batches[2])
        hW, hb = (gWp - gWm) / (2 * delta), (gbp - gbm) / (2 * delta)
        gW2, gb2 = gW2 - alpha * hW, gb2 - alpha * hb
    elif variant == "hf":
        # The exact product, with the hand-derived Hessian of softmax cross-entropy.
        hW, hb = _hvp(W, b, batches[2][0], gW2, gb2)
        gW2, gb2 = gW2 - alpha * hW, gb2 - alpha * hb
    W_new, b_new = W - beta * gW2, b - beta * gb2

    # One step of the Lightning module, fed the same three batches.
    model = _model(W, b)
    module = MetaModule(model, alpha, beta, variant, delta, hvp)
    ClientTrainer().fit(
        module, _Once(tuple(_torch_batches(batches)[: 2 if variant == "fo" else 3])), steps=1
    )
    np.testing.assert_allclose(model.weight.detach().numpy(), W_new, rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.bias.detach().numpy(), b_new, rtol=0, atol=1e-10)


def test_hf_finite_difference_hvp_agrees_with_exact_hessian():
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(2, 3)), rng.normal(size=2)
    batches = _batches(rng, n=8)
    alpha, delta = 0.05, 1e-5
    model = _model(W, b)
    tb = _torch_batches(batches)
    fo, _ = meta_gradient(model, tb[:2], alpha, "fo")
    hf, _ = meta_gradient(model, tb, alpha, "hf", delta, hvp="fd")
    # hf = fo - alpha * H(w; D'') fo  =>  recover the finite-difference HVP
    hvp_fd = [(f - h) / alpha for f, h in zip(fo, hf, strict=True)]

    # Exact HVP from autograd (double backward) along the same vector.
    params = list(model.parameters())
    x3, y3 = tb[2]
    loss = torch.nn.functional.cross_entropy(model(x3), y3)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hvp_exact = torch.autograd.grad(
        sum((g * v).sum() for g, v in zip(grads, fo, strict=True)), params
    )
    for a, e in zip(hvp_fd, hvp_exact, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7)
    # ... and with the hand-derived Hessian of softmax cross-entropy.
    hW, hb = _hvp(W, b, batches[2][0], fo[0].numpy(), fo[1].numpy())
    np.testing.assert_allclose(hvp_exact[0].numpy(), hW, atol=1e-10)
    np.testing.assert_allclose(hvp_exact[1].numpy(), hb, atol=1e-10)


@pytest.mark.parametrize("group", [2, 3])
def test_meta_step_batches_are_disjoint(group):
    n = 200
    split = Split(
        torch.arange(n, dtype=torch.float64).reshape(n, 1, 1), torch.zeros(n, dtype=torch.long)
    )
    loader = BatchLoader(split, batch_size=16, seed=3, group=group)
    seen: list[int] = []
    steps = 0
    for batches in loader:
        assert len(batches) == group
        ids = [set(x.flatten().long().tolist()) for x, _ in batches]
        for i in range(group):
            assert len(ids[i]) == 16
            for j in range(i + 1, group):
                assert not ids[i] & ids[j], "batches of one meta-step share a beat"
        seen += [k for s in ids for k in s]
        steps += 1
    assert steps == len(loader) == n // (16 * group)
    assert len(seen) == len(set(seen)), "a beat was drawn twice in one epoch"


def test_batch_loader_is_seeded_and_covers_the_split():
    split = Split(
        torch.arange(50, dtype=torch.float64).reshape(50, 1, 1), torch.zeros(50, dtype=torch.long)
    )
    a = [x.flatten().tolist() for x, _ in BatchLoader(split, 8, seed=1)]
    b = [x.flatten().tolist() for x, _ in BatchLoader(split, 8, seed=1)]
    c = [x.flatten().tolist() for x, _ in BatchLoader(split, 8, seed=2)]
    assert a == b and a != c
    assert sorted(v for batch in a for v in batch) == list(range(50))
    assert len(a) == 7  # last batch partial, kept


def test_exact_hvp_on_the_cnn_lstm_with_dropout_matches_finite_differences_of_one_mask():
    """The default model has dropout and runs in train mode: the exact product (double backward)
    against a float64 central difference whose two passes share the dropout mask (oracle), and
    the fd mode, which must also share it, against both."""
    from torch.func import functional_call

    from pfl.models import CNNLSTM
    from pfl.strategies.perfedavg import hessian_vector

    torch.manual_seed(0)
    model = CNNLSTM(n_classes=5).double().train()
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    x, y = torch.randn(8, 1, 256, dtype=torch.float64), torch.randint(0, 5, (8,))
    params = {k: p.detach() for k, p in model.named_parameters()}
    vec = [torch.randn_like(p) for p in params.values()]

    def grad_at(w, seed):
        torch.manual_seed(seed)
        leaves = {k: t.detach().requires_grad_(True) for k, t in w.items()}
        loss = nn.functional.cross_entropy(functional_call(model, leaves, (x,)), y)
        return torch.autograd.grad(loss, list(leaves.values()))

    eps = 1e-6
    plus = grad_at({k: p + eps * v for (k, p), v in zip(params.items(), vec, strict=True)}, 7)
    minus = grad_at({k: p - eps * v for (k, p), v in zip(params.items(), vec, strict=True)}, 7)
    oracle = torch.cat([((a - b) / (2 * eps)).flatten() for a, b in zip(plus, minus, strict=True)])

    torch.manual_seed(7)
    exact = torch.cat([h.flatten() for h in hessian_vector(model, params, (x, y), vec, "exact")])
    assert torch.linalg.norm(exact - oracle) / torch.linalg.norm(oracle) < 1e-4
    torch.manual_seed(7)
    fd = torch.cat([h.flatten() for h in hessian_vector(model, params, (x, y), vec, "fd", delta=1e-6)])
    assert torch.linalg.norm(fd - exact) / torch.linalg.norm(exact) < 1e-3
    # Two different masks (what the old meta-step did) give noise, not curvature.
    other = grad_at({k: p - eps * v for (k, p), v in zip(params.items(), vec, strict=True)}, 8)
    noisy = torch.cat([((a - b) / (2 * eps)).flatten() for a, b in zip(plus, other, strict=True)])
    assert torch.linalg.norm(noisy - exact) / torch.linalg.norm(exact) > 10
