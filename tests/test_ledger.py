"""The provenance ledger: what one clean run records, and `pfl-verify` catching each kind of tampering."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from compose import make_cfg

from pfl.ledger import FINAL, GENESIS, LAST, LEDGER, entry_hash, main, read_entries, weights_digest
from pfl.run import train

FAST = ("data.download=false", "data.records=[s01,s02,s03]", "trainer.threads=1", "federation.rounds=3")
VERIFY = str(Path(sys.executable).parent / "pfl-verify")


@pytest.fixture(scope="module")
def clean_run(_synthetic_db_template, tmp_path_factory):
    """One 3-round run tracked in MLflow: its checkpoint directory, run id, store and result."""
    root = tmp_path_factory.mktemp("ledger_run")
    cfg = make_cfg(_synthetic_db_template, root, *FAST, "logger=mlflow")
    result = train(cfg)
    (ckpt_dir,) = (root / "outputs" / "checkpoints").iterdir()
    uri = f"sqlite:///{root / 'outputs' / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    (run,) = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    return ckpt_dir, run.info.run_id, uri, result


def verify(target: str | Path, *args: str, capsys) -> tuple[int, str, str]:
    code = main([str(target), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_clean_run_records_every_round_and_verifies(clean_run, capsys):
    ckpt_dir, _, _, result = clean_run
    entries = read_entries(ckpt_dir / LEDGER)
    assert [e["round"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev"] == GENESIS
    for prev, e in zip([None, *entries], entries, strict=False):
        assert e["hash"] == entry_hash(e)
        if prev:
            assert e["prev"] == prev["hash"] and e["global_before"] == prev["global_after"]
        assert e["config_hash"] == ckpt_dir.name  # the directory is named by the config hash
        assert [u["client"] for u in e["updates"]] == ["s01", "s02", "s03"]
        assert all(u["num_samples"] > 0 and len(u["digest"]) == 64 for u in e["updates"])
        assert e["dropped"] == [] and e["diverged"] == []
    assert entries[-1]["global_after"] == weights_digest(result.global_weights)
    assert len({e["partition_digest"] for e in entries}) == 1

    code, out, err = verify(ckpt_dir, capsys=capsys)
    assert code == 0, err
    assert "verified" in out and "3 rounds" in out and f"{LAST}: round 3" in out and f"{FINAL}: matches round 3" in out


def test_mlflow_run_id_resolves_to_the_checkpoint_directory(clean_run, capsys):
    ckpt_dir, run_id, uri, _ = clean_run
    code, out, err = verify(run_id, "--tracking-uri", uri, capsys=capsys)
    assert code == 0, err
    assert str(ckpt_dir) in out
    assert "MLflow artifact ledger.jsonl: 3 rounds" in out and "MLflow artifact global_model.pt: matches round 3" in out


def _rewrite(path: Path, fn: Callable[[list[dict]], list[dict]]) -> None:
    entries = fn(read_entries(path))
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def _edit_field(entries):
    entries[1]["updates"][0]["num_samples"] += 1
    return entries


def _edit_and_rehash(entries):
    # A forger who recomputes the edited entry's own hash still breaks the next entry's link.
    entries[1]["updates"][0]["num_samples"] += 1
    entries[1]["hash"] = entry_hash(entries[1])
    return entries


def _edit_last_and_rehash(entries):
    # The last entry has no successor; last.pt records the chain head it was written after.
    entries[2]["updates"][1]["digest"] = "0" * 64
    entries[2]["hash"] = entry_hash(entries[2])
    return entries


def _tamper_weights(path: Path, key: str | None = None) -> None:
    obj = torch.load(path, weights_only=True)
    weights = obj[key] if key else obj
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    torch.save(obj, path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


TAMPERING = {
    "edited entry": (lambda d: _rewrite(d / LEDGER, _edit_field), "round 2: entry edited"),
    "edited entry, hash recomputed": (lambda d: _rewrite(d / LEDGER, _edit_and_rehash), "round 3: chain broken"),
    "edited last entry, hash recomputed": (lambda d: _rewrite(d / LEDGER, _edit_last_and_rehash),
                                           "round 3: the ledger entry differs from the one last.pt was written after"),
    "removed entry": (lambda d: _rewrite(d / LEDGER, lambda e: [e[0], e[2]]), "round 2: entry missing"),
    "removed first entry": (lambda d: _rewrite(d / LEDGER, lambda e: e[1:]), "round 1: entry missing"),
    "removed last entry": (lambda d: _rewrite(d / LEDGER, lambda e: e[:2]),
                           "round 3: last.pt is at round 3, the ledger ends at round 2"),
    "reordered entries": (lambda d: _rewrite(d / LEDGER, lambda e: [e[0], e[2], e[1]]), "round 3: out of order"),
    "edited last.pt weights": (lambda d: _tamper_weights(d / LAST, "global"), "round 3: last.pt weights differ"),
    "edited final model": (lambda d: _tamper_weights(d / FINAL), "round 3: final_model.pt weights differ"),
    "removed final model": (lambda d: (d / FINAL).unlink(), "round 3: final_model.pt missing"),
    "removed last.pt": (lambda d: (d / LAST).unlink(), "round 3: last.pt missing"),
    "removed ledger": (lambda d: (d / LEDGER).unlink(), "no ledger.jsonl"),
    "pickled payload in last.pt": (lambda d: torch.save({"round": 3, "x": _Payload()}, d / LAST),
                                   "round 3: last.pt refused"),
    "garbage line": (lambda d: (d / LEDGER).write_text((d / LEDGER).read_text() + "not json\n"),
                     "line 4 is not a ledger entry"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_each_kind_of_tampering_fails_naming_the_round(clean_run, tmp_path, capsys, kind):
    tamper, expected = TAMPERING[kind]
    copy = tmp_path / clean_run[0].name
    shutil.copytree(clean_run[0], copy)
    tamper(copy)
    code, out, err = verify(copy, capsys=capsys)
    assert code == 1, out
    assert expected in err, err
    assert "verified" not in out


def test_tampering_seen_through_the_mlflow_run(clean_run, capsys):
    """A run id checks the local directory and MLflow's own copies; either one altered fails."""
    ckpt_dir, run_id, uri, _ = clean_run
    ledger = ckpt_dir / LEDGER
    original = ledger.read_bytes()
    try:
        # The forger rewrites the whole chain consistently, but MLflow kept the original.
        entries = read_entries(ledger)
        entries[1]["time"] = "2000-01-01T00:00:00Z"
        prev = GENESIS
        for e in entries:
            e["prev"] = prev
            e["hash"] = prev = entry_hash(e)
        ledger.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        code, _, err = verify(run_id, "--tracking-uri", uri, capsys=capsys)
        assert code == 1 and "round 2: the MLflow copy of the ledger and ledger.jsonl" in err, err
    finally:
        ledger.write_bytes(original)

    # MLflow's copy, not the one in the run directory (outputs/runs/, written for any logger).
    store = Path(uri.removeprefix("sqlite:///")).parent
    (model,) = [p for p in store.rglob("global_model.pt") if p.relative_to(store).parts[0] != "runs"]
    saved = model.read_bytes()
    try:
        _tamper_weights(model)
        code, _, err = verify(run_id, "--tracking-uri", uri, capsys=capsys)
        assert code == 1 and "round 3: MLflow artifact global_model.pt weights differ" in err, err
    finally:
        model.write_bytes(saved)
    assert verify(run_id, "--tracking-uri", uri, capsys=capsys)[0] == 0


def test_verify_usage_errors(tmp_path, capsys):
    code, _, err = verify(tmp_path / "nope", capsys=capsys)
    assert code == 2 and "neither a directory nor an MLflow run id" in err
    code, _, err = verify("0" * 32, "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", capsys=capsys)
    assert code == 2 and "no such MLflow store" in err
    assert not (tmp_path / "none.db").exists()  # verifying never creates a store


def test_pfl_verify_console_script(clean_run, tmp_path):
    """The installed command: exit 0 on the clean run, 1 with the round on stderr when tampered."""
    ckpt_dir = clean_run[0]
    ok = subprocess.run([VERIFY, str(ckpt_dir)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "verified" in ok.stdout, ok.stderr
    copy = tmp_path / "copy"
    shutil.copytree(ckpt_dir, copy)
    _rewrite(copy / LEDGER, _edit_field)
    bad = subprocess.run([VERIFY, str(copy)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "round 2: entry edited" in bad.stderr and "Traceback" not in bad.stderr
