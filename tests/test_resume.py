"""Resume: an interrupted or SIGKILLed run continued with resume=true ends exactly where an
uninterrupted run ends, with one unbroken ledger."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from compose import make_cfg

from pfl.fl.checkpoint import Checkpointer
from pfl.ledger import LAST, LEDGER, LedgerError, main, read_entries
from pfl.run import train

PFL = str(Path(sys.executable).parent / "pfl")
RUN = ("data.download=false", "data.records=[s01,s02,s03]", "trainer.threads=1", "federation.rounds=3")


def same_metrics(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def ledger_digests(ckpt_dir: Path) -> list[tuple]:
    """What a round produced, without the wall-clock time each entry also records."""
    return [(e["round"], e["global_before"], e["global_after"], json.dumps(e["updates"]))
            for e in read_entries(ckpt_dir / LEDGER)]


@pytest.fixture(scope="module")
def reference(_synthetic_db_template, tmp_path_factory):
    """The uninterrupted 3-round run: its result and checkpoint directory."""
    root = tmp_path_factory.mktemp("uninterrupted")
    result = train(make_cfg(_synthetic_db_template, root, *RUN))
    (ckpt_dir,) = (root / "outputs" / "checkpoints").iterdir()
    return result, ckpt_dir


def _interrupt(monkeypatch, at_round: int, before_checkpoint: bool) -> None:
    """Ctrl-C at the end of a round: after its checkpoint, or between the ledger entry and it."""
    save = Checkpointer.on_round_end

    def on_round_end(self, info):
        if info.rnd == at_round and before_checkpoint:
            raise KeyboardInterrupt
        save(self, info)
        if info.rnd == at_round:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "on_round_end", on_round_end)


@pytest.mark.parametrize("before_checkpoint", [False, True], ids=["after-checkpoint", "before-checkpoint"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(_synthetic_db_template, tmp_path, monkeypatch,
                                                             capsys, reference, before_checkpoint):
    ref, ref_dir = reference
    with monkeypatch.context() as m:
        _interrupt(m, at_round=2, before_checkpoint=before_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(_synthetic_db_template, tmp_path, *RUN))
    (ckpt_dir,) = (tmp_path / "outputs" / "checkpoints").iterdir()
    assert ckpt_dir.name == ref_dir.name  # same config, same directory name
    saved_round = 1 if before_checkpoint else 2
    assert torch.load(ckpt_dir / LAST, weights_only=True)["round"] == saved_round
    assert [e["round"] for e in read_entries(ckpt_dir / LEDGER)] == [1, 2]  # the ledger is written first
    # A crash during a checkpoint write leaves a torn temporary file; resume must not care.
    torn = ckpt_dir / f".{LAST}.crashed.tmp"
    torn.write_bytes(b"\x00" * 100)

    result = train(make_cfg(_synthetic_db_template, tmp_path, *RUN, "resume=true"))
    assert [h["round"] for h in result.history] == list(range(saved_round + 1, 4))  # only the missing rounds ran
    assert same_metrics(result.metrics, ref.metrics)
    assert all(torch.equal(result.global_weights[k], ref.global_weights[k]) for k in ref.global_weights)
    assert ledger_digests(ckpt_dir) == ledger_digests(ref_dir)  # every round identical, not only the last
    assert not torn.exists()
    capsys.readouterr()
    assert main([str(ckpt_dir)]) == 0, capsys.readouterr().err


def test_resume_refuses_a_ledger_that_does_not_match_the_checkpoint(_synthetic_db_template, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _interrupt(m, at_round=1, before_checkpoint=False)
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.rounds=2"))
    (ckpt_dir,) = (tmp_path / "outputs" / "checkpoints").iterdir()
    ledger = ckpt_dir / LEDGER
    entry = read_entries(ledger)[0]
    entry["global_after"] = "0" * 64  # forged, hash not even recomputed
    ledger.write_text(json.dumps(entry) + "\n")
    cfg = make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.rounds=2", "resume=true")
    with pytest.raises(LedgerError, match=r"resume: .*round 1: entry edited.*pfl-verify"):
        train(cfg)
    ledger.unlink()
    with pytest.raises(LedgerError, match=r"no ledger.jsonl beside the checkpoint"):
        train(cfg)


def test_sigkill_mid_round_then_resume_matches_the_uninterrupted_run(_synthetic_db_template, tmp_path, reference):
    """A real `pfl` process killed with SIGKILL during round 2 of 3, then resume=true."""
    ref, ref_dir = reference
    args = [f"data.root={_synthetic_db_template}", f"paths.root_dir={tmp_path}", "partition=patient", "model=cnn",
            "federation.local_epochs=1", "federation.batch_size=32", "trainer.progress=false", "logger=none", *RUN]
    log = tmp_path / "pfl.log"
    ckpt_root = tmp_path / "outputs" / "checkpoints"
    with log.open("w") as fh:
        proc = subprocess.Popen([PFL, *args], stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not list(ckpt_root.glob(f"*/{LAST}")):  # last.pt appears as round 1 ends
                assert proc.poll() is None, f"pfl ended before round 1 was checkpointed: {log.read_text()}"
                assert time.monotonic() < deadline, "round 1 took too long"
                time.sleep(0.02)
            # Round 2 starts as soon as round 1's checkpoint is written; its first client's
            # training alone takes longer than this.
            time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    (ckpt_dir,) = ckpt_root.iterdir()
    assert [e["round"] for e in read_entries(ckpt_dir / LEDGER)] == [1], "the kill did not land in round 2"
    assert torch.load(ckpt_dir / LAST, weights_only=True)["round"] == 1
    round1 = (ckpt_dir / LEDGER).read_text()

    result = train(make_cfg(_synthetic_db_template, tmp_path, *RUN, "resume=true"))
    assert [h["round"] for h in result.history] == [2, 3]
    assert same_metrics(result.metrics, ref.metrics)
    assert ledger_digests(ckpt_dir) == ledger_digests(ref_dir)
    assert (ckpt_dir / LEDGER).read_text().startswith(round1)  # round 1's entry kept as written
    assert main([str(ckpt_dir)]) == 0


def test_resume_true_without_a_checkpoint_starts_fresh(_synthetic_db_template, tmp_path, caplog):
    with caplog.at_level("INFO", logger="pfl.run"):
        result = train(make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.rounds=1", "resume=true"))
    assert "no checkpoint for this config yet" in caplog.text
    assert [h["round"] for h in result.history] == [1]


def test_a_fresh_run_replaces_an_earlier_run_of_the_same_config(_synthetic_db_template, tmp_path, monkeypatch):
    """resume=false over an old run: the old checkpoint and final model go as the new chain starts,
    so a crash in round 1 cannot leave a checkpoint the new ledger does not know."""
    cfg = make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.rounds=1")
    train(cfg)
    (ckpt_dir,) = (tmp_path / "outputs" / "checkpoints").iterdir()
    assert {p.name for p in ckpt_dir.iterdir()} == {LEDGER, LAST, "final_model.pt"}

    def crash(self, info):
        raise RuntimeError("crash in round 1")

    monkeypatch.setattr("pfl.ledger.Ledger.on_round_end", crash)
    with pytest.raises(RuntimeError):
        train(cfg)
    assert {p.name for p in ckpt_dir.iterdir()} == {LEDGER}
    assert read_entries(ckpt_dir / LEDGER) == []
    assert os.path.getsize(ckpt_dir / LEDGER) == 0


def test_ctrl_c_says_how_to_continue(_synthetic_db_template, tmp_path, monkeypatch, capsys):
    from pfl.cli import train_main

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr("pfl.run.train", interrupted)
    with pytest.raises(SystemExit) as exc:
        train_main(make_cfg(_synthetic_db_template, tmp_path, *RUN))
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "resume=true" in err and "Traceback" not in err


@pytest.mark.parametrize("strategy", ["scaffold", "ditto", "apfl", "fedrod", "fedrep augment=ecg"])
def test_stateful_strategies_resume_to_the_uninterrupted_result(_synthetic_db_template, tmp_path, monkeypatch,
                                                                strategy):
    """Server state (SCAFFOLD's c) and client state (control variates, personal models, APFL's
    mixing weight, FedRoD's personal head) come back from the checkpoint: a resumed run ends where an uninterrupted one does.
    With augmented batches too: their draws are seeded by round and client, not carried."""
    run = (*RUN, *f"strategy={strategy}".split())
    ref = train(make_cfg(_synthetic_db_template, tmp_path / "ref", *run))
    with monkeypatch.context() as m:
        _interrupt(m, at_round=2, before_checkpoint=False)
        with pytest.raises(KeyboardInterrupt):
            train(make_cfg(_synthetic_db_template, tmp_path / "cut", *run))
    result = train(make_cfg(_synthetic_db_template, tmp_path / "cut", *run, "resume=true"))
    assert [h["round"] for h in result.history] == [3]
    assert same_metrics(result.metrics, ref.metrics)
    assert all(torch.equal(result.global_weights[k], ref.global_weights[k]) for k in ref.global_weights)
