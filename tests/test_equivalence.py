"""pfl's full pipeline computes exactly what a plain PyTorch FedAvg loop computes.

The plain loop (tests/plain_loop.py) is the reference `make bench` measures pfl's
overhead against; it shares only the data pipeline, the model classes and the batch order with
pfl, so equality here means no speed-up in the Lightning trainer, the server loop, evaluation
or tracking has changed a single bit of the results.
"""

from __future__ import annotations

import math

import pytest
import torch
from compose import make_cfg
from plain_loop import plain_federated, same_weights

from pfl.run import train


@pytest.mark.parametrize("model, rounds", [("cnn", 2), ("cnn_lstm", 1)])
def test_pfl_equals_plain_pytorch_loop(synthetic_db, tmp_path, model, rounds):
    # cnn_lstm has dropout: equality also shows that nothing between seeding and training
    # draws from torch's global generator.
    over = (f"model={model}", f"federation.rounds={rounds}", "strategy=none", "trainer.threads=1",
            "federation.batch_size=32")
    before = torch.get_num_threads()
    try:
        pfl_result = train(make_cfg(synthetic_db, tmp_path / "pfl", *over, "logger=mlflow"))
        plain = plain_federated(make_cfg(synthetic_db, tmp_path / "plain", *over))
    finally:
        torch.set_num_threads(before)
    assert same_weights(pfl_result.global_weights, plain.weights)
    assert [h["train_loss"] for h in pfl_result.history] == plain.train_loss
    # The oracle's scores come from scikit-learn on the plain loop's predictions (rebuilt from
    # its confusion matrices: one (true, predicted) pair per beat), not from pfl's formulas.
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    checked = 0
    for (cid, split), cm in plain.cms.items():
        cm = cm.numpy()
        if cm.sum() == 0:
            continue
        true, pred = np.nonzero(cm)
        y, p = np.repeat(true, cm[true, pred]), np.repeat(pred, cm[true, pred])
        assert pfl_result.metrics[f"client.{cid}.{split}.global.acc"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
        assert pfl_result.metrics[f"client.{cid}.{split}.global.f1"] == pytest.approx(
            f1_score(y, p, average="macro", zero_division=0), abs=1e-12), (cid, split)
        checked += 1
    assert checked == 6 * 2  # clients x splits
    # The plain loop is a real reference, not a copy of pfl's output: it learns something.
    assert all(math.isfinite(v) for v in plain.train_loss)


def test_plain_loop_differs_when_the_math_differs(synthetic_db, tmp_path):
    over = ("model=cnn", "federation.rounds=1", "strategy=none", "trainer.threads=1")
    before = torch.get_num_threads()
    try:
        a = plain_federated(make_cfg(synthetic_db, tmp_path / "a", *over))
        b = plain_federated(make_cfg(synthetic_db, tmp_path / "b", *over, "federation.optimizer.lr=0.002"))
    finally:
        torch.set_num_threads(before)
    assert not same_weights(a.weights, b.weights)


@pytest.mark.parametrize("model_name", ["SmallCNN", "CNNLSTM"])
def test_evaluation_batch_size_does_not_change_outputs(synthetic_db, tmp_path, model_name):
    # federation.eval_batch_size defaults to 256 because smaller batches are faster on CPU; that
    # is only a speed-up if every batch size gives the very same logits, the last short batch too.
    import pfl.models
    from pfl.metrics import chunks, predict
    from pfl.run import load_federation

    cfg = make_cfg(synthetic_db, tmp_path)
    x_all = torch.cat([c.test.x for c in load_federation(cfg).clients])
    torch.manual_seed(0)
    model = getattr(pfl.models, model_name)().eval()
    with torch.inference_mode():
        for n in (600, 259, 5):
            x = x_all[:n]
            ref = model(x)  # one batch
            for bs in (1, 7, 100, 256):
                parts = chunks(n, bs)
                assert min(s.stop - s.start for s in parts) >= min(n, 32)
                assert torch.equal(torch.cat([model(x[s]) for s in parts]), ref), (n, bs)
                assert torch.equal(predict(model, x, bs), ref.argmax(1))
