"""trainer.fast_kernels: the max pooling stand-in against PyTorch's own, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pfl.models import CNNLSTM, SmallCNN
from pfl.models.kernels import MaxPool1d, fast_kernels


def _input(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.relu(torch.randn(*shape, generator=g))  # ReLU zeros: windows whose maxima tie at 0
    x[0, 0, :6] = 1.25  # ties at a positive maximum
    x[-1, -1, 1::3] = 2.0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k, length", [(2, 16), (2, 17), (3, 20), (4, 64), (4, 23)])
def test_max_pool_matches_torch_outputs_and_gradients_exactly(k, length, dtype):
    x = _input((3, 5, length), dtype)
    conv = nn.Conv1d(5, 5, 3, padding=1).to(dtype)  # the pool's input is not a leaf, as in a model
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = nn.MaxPool1d(k)(conv(a)), MaxPool1d(k)(conv(b))
    assert ya.dtype == yb.dtype and torch.equal(ya, yb)
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    ga = torch.autograd.grad(ya, a, g)[0]
    gb = torch.autograd.grad(yb, b, g)[0]
    assert torch.equal(ga, gb)
    # The oracle by hand for the pool alone: each window's gradient lands on its first maximum.
    z = x.clone().requires_grad_(True)
    (MaxPool1d(k)(z) * g).sum().backward()
    want = torch.zeros_like(x)
    n = length // k
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            for w in range(n):
                win = x[i, c, w * k:(w + 1) * k]
                want[i, c, w * k + int(torch.nonzero(win == win.max())[0])] = g[i, c, w]
    assert torch.equal(z.grad, want)


def test_swap_keeps_the_state_dict_and_only_takes_pools_it_computes_exactly():
    model = nn.Sequential(nn.MaxPool1d(2), nn.MaxPool1d(3, stride=2), nn.MaxPool1d(2, padding=1),
                          nn.MaxPool1d(2, ceil_mode=True), nn.Sequential(nn.Conv1d(1, 2, 3), nn.MaxPool1d(4)))
    fast_kernels(model)
    kinds = [type(m) for m in (model[0], model[1], model[2], model[3], model[4][1])]
    assert kinds == [MaxPool1d, nn.MaxPool1d, nn.MaxPool1d, nn.MaxPool1d, MaxPool1d]
    assert (model[0].kernel_size, model[4][1].kernel_size) == (2, 4)
    ref = CNNLSTM()
    assert list(fast_kernels(CNNLSTM()).state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("make", [lambda: CNNLSTM(conv_channels=(4, 8), lstm_hidden=8, head_hidden=8, dropout=0.0),
                                  lambda: SmallCNN(channels=4)], ids=["cnn_lstm", "cnn"])
@pytest.mark.parametrize("bf16", [False, True])
def test_training_with_the_swap_gives_the_same_weights(make, bf16):
    def train(swap: bool):
        torch.manual_seed(0)
        model = make()
        if swap:
            fast_kernels(model)
        start = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(3)
        for _ in range(5):
            x, y = torch.randn(8, 1, 256, generator=g), torch.randint(0, 5, (8,), generator=g)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        assert not all(torch.equal(start[k], v) for k, v in model.state_dict().items())  # it trained
        return model.state_dict()

    a, b = train(False), train(True)
    assert all(torch.equal(a[k], b[k]) for k in a)
