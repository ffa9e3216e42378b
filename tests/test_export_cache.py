"""The pt2 model's torch.export program, traced once per architecture (pfl/export_cache.py)."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch
from compose import make_cfg
from mlflow.tracking import MlflowClient
from torch import nn

from pfl import export_cache
from pfl.models import SmallCNN


class _Act(nn.Module):
    """Same parameters whatever `tanh` says, different logits: a code change the state dict
    does not see."""

    def __init__(self, tanh: bool):
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.tanh = tanh

    def forward(self, x):
        h = self.lin(x.flatten(1))
        return torch.tanh(h) if self.tanh else torch.relu(h)


@pytest.fixture
def traces(monkeypatch):
    """Counts the tracings torch.export.export really does (not those answered by `reusing`)."""
    calls: list[nn.Module] = []
    original = torch.export.export

    def counting(mod, *args, **kwargs):
        calls.append(mod)
        return original(mod, *args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counting)
    monkeypatch.setattr(export_cache, "_MEMORY", {})  # each test starts as a fresh process
    return calls


def _cnn(seed: int, channels: int = 4) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(window=64, channels=channels).eval()


def _logits(program, x):
    with torch.no_grad():
        return program.module()(x)


def test_a_second_model_of_one_architecture_loads_the_program_with_its_own_weights(tmp_path, traces):
    example = torch.zeros(2, 1, 64)
    first, hit = export_cache.exported(_cnn(0), example, tmp_path)
    assert (hit, len(traces)) == (False, 1)
    assert len(list(tmp_path.glob("*.pt2"))) == 1
    other = _cnn(1)
    program, hit = export_cache.exported(other, example, tmp_path)
    assert (hit, len(traces)) == (True, 1)  # no second tracing
    # Oracle: the model's own eager forward, on a batch size the example did not have.
    x = torch.randn(5, 1, 64)
    with torch.no_grad():
        want = other(x)
    assert not torch.allclose(want, _cnn(0)(x))  # the two models differ
    torch.testing.assert_close(_logits(program, x), want, rtol=1e-5, atol=1e-6)


def test_a_new_process_loads_the_program_from_disk(tmp_path, traces, monkeypatch):
    example = torch.zeros(2, 1, 64)
    export_cache.exported(_cnn(0), example, tmp_path)
    monkeypatch.setattr(export_cache, "_MEMORY", {})  # as a later process finds it
    other = _cnn(3)
    program, hit = export_cache.exported(other, example, tmp_path)
    assert (hit, len(traces)) == (True, 1)
    x = torch.randn(3, 1, 64)
    with torch.no_grad():
        torch.testing.assert_close(_logits(program, x), other(x), rtol=1e-5, atol=1e-6)


def test_another_configuration_is_traced_and_stored_apart(tmp_path, traces):
    example = torch.zeros(2, 1, 64)
    export_cache.exported(_cnn(0, channels=4), example, tmp_path)
    program, hit = export_cache.exported(_cnn(0, channels=8), example, tmp_path)
    assert (hit, len(traces)) == (False, 2)
    assert len(list(tmp_path.glob("*.pt2"))) == 2
    assert export_cache.key(_cnn(0, 4), example) != export_cache.key(_cnn(0, 4), torch.zeros(2, 1, 32))


def test_an_entry_that_does_not_reproduce_the_model_is_traced_afresh_and_replaced(tmp_path, traces, monkeypatch,
                                                                                   caplog):
    """Two architectures under one key (as a model's code changed without its key changing): the
    stored program's logits differ from the model's, so the model is traced again."""
    monkeypatch.setattr(export_cache, "key", lambda model, example: "same")
    example = torch.zeros(2, 1, 6)
    export_cache.exported(_Act(tanh=False), example, tmp_path)
    model = _Act(tanh=True).eval()
    with caplog.at_level(logging.WARNING, logger="pfl.export_cache"):
        program, hit = export_cache.exported(model, example, tmp_path)
    assert (hit, len(traces)) == (False, 2)
    assert "does not reproduce the model" in caplog.text
    x = torch.randn(4, 1, 6)
    torch.testing.assert_close(_logits(program, x), model(x).detach())
    # The entry now holds the tanh model: a third call is answered from it.
    assert export_cache.exported(_Act(tanh=True), example, tmp_path)[1] is True


def test_an_unreadable_entry_is_traced_afresh(tmp_path, traces, caplog):
    example = torch.zeros(2, 1, 64)
    model = _cnn(0)
    (tmp_path / f"{export_cache.key(model, example)}.pt2").write_bytes(b"not a program")
    with caplog.at_level(logging.WARNING, logger="pfl.export_cache"):
        _, hit = export_cache.exported(model, example, tmp_path)
    assert (hit, len(traces)) == (False, 1) and "unreadable" in caplog.text
    assert export_cache.exported(_cnn(2), example, tmp_path)[1] is True


def test_without_a_cache_directory_every_call_traces(tmp_path, traces):
    example = torch.zeros(2, 1, 64)
    export_cache.exported(_cnn(0), example, None)
    export_cache.exported(_cnn(0), example, None)
    assert len(traces) == 2 and not list(tmp_path.iterdir())


def test_reusing_answers_for_that_model_only_and_restores_the_function(tmp_path, traces):
    model, bystander = _cnn(0), _cnn(1)
    example = torch.zeros(2, 1, 64)
    program, _ = export_cache.exported(model, example, None)
    patched = torch.export.export
    with export_cache.reusing(model, program) as answered:
        assert torch.export.export(model, (example,)) is program
        other = torch.export.export(bystander, (example,))
    assert answered == [1] and other is not program and len(traces) == 2
    assert torch.export.export is patched


def _run(synthetic_db, tmp_path, uri: str, study: str, *extra: str):
    from pfl.run import train

    cfg = make_cfg(synthetic_db, tmp_path, "logger=mlflow", f"logger.tracking_uri={uri}", f"study={study}", *extra)
    train(cfg)
    return cfg


def test_a_second_run_logs_the_cached_program_and_it_serves_its_own_weights(synthetic_db, tmp_path, traces,
                                                                            monkeypatch):
    """Through MLflow: the first run traces the model once (MLflow's own call answered from
    that tracing), the second run of the same architecture traces nothing, and its logged model
    computes its own final weights' logits. Fails if MLflow stops tracing through
    torch.export.export (its call would not be answered)."""
    from test_tracking import _final_model, _only_run, _serve

    from pfl.run import load_federation
    from pfl.tracking import store_uri

    answered: list[list[int]] = []
    real = export_cache.reusing

    @contextlib.contextmanager
    def recording(model, program):
        with real(model, program) as n:
            answered.append(n)
            yield n

    monkeypatch.setattr(export_cache, "reusing", recording)
    # MLflow's reload of the saved program at run end is skipped (pfl checked it before).
    import mlflow.models.utils

    reloads: list = []
    monkeypatch.setattr(mlflow.models.utils, "_validate_serving_input", lambda *a, **k: reloads.append(k or a))
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    _run(synthetic_db, tmp_path, uri, "first")
    assert len(traces) == 1 and answered == [[1]]
    assert len(list((tmp_path / "outputs" / "cache" / "export").glob("*.pt2"))) == 1
    cfg = _run(synthetic_db, tmp_path, uri, "second", "seed=1")
    assert len(traces) == 1 and answered == [[1], [1]] and reloads == []
    client = MlflowClient(tracking_uri=store_uri(uri))
    run = _only_run(client, "second")
    beats = load_federation(cfg).clients[0].test.x[:3].numpy()
    _, logits = _serve(uri, run.info.run_id, beats)
    with torch.no_grad():
        expected = _final_model(client, run, cfg, tmp_path / "dl")(torch.from_numpy(beats)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    first = _final_model(client, _only_run(client, "first"), cfg, tmp_path / "dl1")
    with torch.no_grad():
        assert not np.allclose(first(torch.from_numpy(beats)).numpy(), expected)  # seeds 0 and 1 differ


def test_export_cache_false_traces_every_run_and_stores_nothing(synthetic_db, tmp_path, traces):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    for study in ("a", "b"):
        _run(synthetic_db, tmp_path, uri, study, "logger.export_cache=false")
    assert len(traces) == 2
    assert not (tmp_path / "outputs" / "cache" / "export").exists()


def test_the_callers_models_are_never_written_to(tmp_path, traces):
    """The kept program receives the next run's weights: it must not share them with the model
    of the run that traced it."""
    example = torch.zeros(2, 1, 64)
    first = _cnn(0)
    before = {k: v.clone() for k, v in first.state_dict().items()}
    export_cache.exported(first, example, tmp_path)
    export_cache.exported(_cnn(1), example, tmp_path)  # answered from memory
    for k, v in first.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_rr_standardization_and_batchnorm_statistics_come_from_the_run(tmp_path, traces):
    """The served wrapper's mean/std and BatchNorm's running statistics are buffers that differ
    run by run: a cached program must carry the new run's."""
    from pfl.models.inputs import StandardizeRR

    def served(seed: int):
        torch.manual_seed(seed)
        net = SmallCNN(window=64, channels=4, rr_features=2, norm="batch")
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        return StandardizeRR(net, torch.rand(2) + 0.5, torch.rand(2) + 0.5).eval()

    example = torch.zeros(2, 1, 66)
    export_cache.exported(served(0), example, tmp_path)
    for seed in (1, 2):
        model = served(seed)
        program, hit = export_cache.exported(model, example, tmp_path)
        assert hit and len(traces) == 1
        x = torch.randn(7, 1, 66) * 2
        with torch.no_grad():
            torch.testing.assert_close(_logits(program, x), model(x), rtol=1e-5, atol=1e-6)
        export_cache._MEMORY.clear()  # the second one from disk


class _Clamp(nn.Module):
    """A non-persistent buffer (not in the state dict) that changes the logits."""

    def __init__(self, threshold: float):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.register_buffer("threshold", torch.tensor(threshold), persistent=False)

    def forward(self, x):
        return self.lin(torch.minimum(x.flatten(1), self.threshold))


def test_a_non_persistent_buffer_comes_from_the_run_too(tmp_path, traces):
    example = torch.zeros(2, 1, 4)
    torch.manual_seed(0)
    export_cache.exported(_Clamp(5.0).eval(), example, tmp_path)
    model = _Clamp(0.5).eval()
    program, hit = export_cache.exported(model, example, tmp_path)
    assert hit and len(traces) == 1  # the program took the new threshold, no second tracing
    x = torch.linspace(-3, 3, 12).reshape(3, 1, 4)
    with torch.no_grad():
        torch.testing.assert_close(_logits(program, x), model(x))


def test_a_cache_that_cannot_be_written_costs_the_cache_not_the_run(tmp_path, traces, monkeypatch, caplog):
    """torch's writer raises RuntimeError on a full disk, not OSError."""
    def full(program, f, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch.export, "save", full)
    model = _cnn(0)
    with caplog.at_level(logging.WARNING, logger="pfl.export_cache"):
        program, hit = export_cache.exported(model, torch.zeros(2, 1, 64), tmp_path)
    assert hit is False and "not cached" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no half-written entry
    x = torch.randn(3, 1, 64)
    with torch.no_grad():
        torch.testing.assert_close(_logits(program, x), model(x))


def test_overlapping_reusing_blocks_restore_torchs_function_when_the_last_closes(traces):
    """Two threads' blocks may close in the order they opened (A, B open; A, B close)."""
    a, b = _cnn(0), _cnn(1)
    pa, pb = object(), object()
    original = torch.export.export
    first, second = export_cache.reusing(a, pa), export_cache.reusing(b, pb)
    first.__enter__()
    second.__enter__()
    assert torch.export.export(a) is pa and torch.export.export(b) is pb
    first.__exit__(None, None, None)
    assert torch.export.export(b) is pb  # the open block still answers
    second.__exit__(None, None, None)
    assert torch.export.export is original


def test_the_key_follows_layer_settings_and_the_models_source(tmp_path, monkeypatch):
    """Same state dict, another dropout: another key. An edit to the file that defines a module
    class: another key (a model's code changed between runs)."""
    import importlib
    import sys

    example = torch.zeros(2, 1, 64)
    assert export_cache.key(SmallCNN(window=64, dropout=0.0), example) != \
        export_cache.key(SmallCNN(window=64, dropout=0.5), example)
    src = tmp_path / "edited_model.py"
    src.write_text("import torch\nclass Net(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("edited_model")
    try:
        before = export_cache.key(module.Net(3, 2), torch.zeros(2, 3))
        assert before == export_cache.key(module.Net(3, 2), torch.zeros(2, 3))  # stable
        src.write_text("import torch\nclass Net(torch.nn.Linear):\n    pass  # edited\n")
        assert export_cache.key(module.Net(3, 2), torch.zeros(2, 3)) != before
    finally:
        sys.modules.pop("edited_model", None)


def _age(path, seconds: float) -> None:
    import os
    import time

    t = time.time() - seconds
    os.utime(path, (t, t))


def test_the_directory_keeps_the_entries_used_last(tmp_path, traces, monkeypatch):
    monkeypatch.setattr(export_cache, "KEEP", 3)
    example = torch.zeros(2, 1, 64)
    keys = {}
    for i, channels in enumerate((2, 3, 4)):
        export_cache.exported(_cnn(0, channels), example, tmp_path)
        keys[channels] = export_cache.key(_cnn(0, channels), example)
        _age(tmp_path / f"{keys[channels]}.pt2", 100 - 10 * i)  # stored 100, 90, 80 s ago
    # A later process loads the oldest entry: it becomes the one used last.
    monkeypatch.setattr(export_cache, "_MEMORY", {})
    assert export_cache.exported(_cnn(1, 2), example, tmp_path)[1] is True
    export_cache.exported(_cnn(0, 5), example, tmp_path)  # a fourth architecture: one entry goes
    left = {p.stem for p in tmp_path.glob("*.pt2")}
    assert left == {keys[2], keys[4], export_cache.key(_cnn(0, 5), example)}  # 3, the least recently used, went


def test_temporary_files_of_killed_writers_go_once_stale_and_a_live_writers_stay(tmp_path, traces):
    stale, live = tmp_path / f"abc.x1{export_cache._TMP_SUFFIX}", tmp_path / f"abc.x2{export_cache._TMP_SUFFIX}"
    stale.write_bytes(b"half a program")
    live.write_bytes(b"being written")
    _age(stale, export_cache.STALE_S + 60)
    _age(live, 5)
    export_cache.exported(_cnn(0), torch.zeros(2, 1, 64), tmp_path)
    assert not stale.exists() and live.exists()
    assert len([p for p in tmp_path.glob("*.pt2") if not p.name.endswith(export_cache._TMP_SUFFIX)]) == 1


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(1, 4, batch_first=True)
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(self.lstm(x.transpose(1, 2))[0][:, -1])


def test_an_lstm_is_exported_without_torchs_flat_weights_warning_and_reproduces(tmp_path, traces):
    import warnings

    torch.manual_seed(0)
    model = _Recurrent().eval()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        program, _ = export_cache.exported(model, torch.zeros(2, 1, 8), tmp_path)
    assert not [w for w in seen if "_flat_weights" in str(w.message)]
    x = torch.randn(3, 1, 8)
    with torch.no_grad():
        torch.testing.assert_close(_logits(program, x), model(x))


def test_nested_reusing_blocks_of_one_model_answer_innermost_first_and_restore_torchs_function(traces):
    model = _cnn(0)
    outer, inner = object(), object()
    original = torch.export.export
    with export_cache.reusing(model, outer) as answered_outer:
        with export_cache.reusing(model, inner) as answered_inner:
            assert torch.export.export(model) is inner
        assert torch.export.export(model) is outer  # the outer block still answers
    assert torch.export.export is original
    assert (answered_outer[0], answered_inner[0]) == (1, 1)


def test_a_fresh_program_that_does_not_reproduce_the_model_is_not_cached(tmp_path, traces, monkeypatch, caplog):
    monkeypatch.setattr(export_cache, "_reproduces", lambda program, model, example: False)
    with caplog.at_level(logging.WARNING, logger="pfl.export_cache"):
        _, hit = export_cache.exported(_cnn(0), torch.zeros(2, 1, 64), tmp_path)
    assert hit is False and "does not reproduce" in caplog.text
    assert not list(tmp_path.glob("*.pt2")) and not export_cache._MEMORY


def test_an_entry_another_user_wrote_is_not_loaded(tmp_path, traces, monkeypatch, caplog):
    import os

    example = torch.zeros(2, 1, 64)
    export_cache.exported(_cnn(0), example, tmp_path)
    monkeypatch.setattr(export_cache, "_MEMORY", {})
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)  # as another user finds it
    with caplog.at_level(logging.WARNING, logger="pfl.export_cache"):
        _, hit = export_cache.exported(_cnn(1), example, tmp_path)
    assert (hit, len(traces)) == (False, 2) and "belongs to another user" in caplog.text
