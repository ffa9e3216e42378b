"""Every bad input a user can give `pfl`, one row each (the README's table): one `error:` line that
names the bad value and what is allowed, a non-zero exit, no traceback, no MLflow run left
RUNNING, and nothing half-written.

Most rows call the `pfl` entry point in-process (`train_main(cfg)` runs the same code as the
console script after Hydra has composed the config); a few run the real console script to prove
the exit code and the absence of a traceback end to end.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from compose import make_cfg

from pfl.cli import train_main
from pfl.errors import PflError
from pfl.run import train

PFL = str(Path(sys.executable).parent / "pfl")
RUN = ("data.download=false", "data.records=[s01,s02,s03]", "trainer.threads=1", "federation.rounds=1")


def answer(cfg, capsys) -> tuple[int, str]:
    """Exit code and stderr of the `pfl` entry point on a composed config."""
    with pytest.raises(SystemExit) as exc:
        train_main(cfg)
    return exc.value.code, capsys.readouterr().err


def assert_rejected(code: int, err: str, needles: tuple[str, ...]) -> None:
    assert code == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in errors[0], f"{n!r} not in {errors[0]!r}"


def assert_nothing_left(root: Path, data_loaded: bool) -> None:
    out = root / "outputs"
    assert not (out / "checkpoints").exists(), "a rejected run left a checkpoint directory"
    if not data_loaded:
        assert not (out / "cache").exists(), "a config rejected before loading data left cache files"
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    db = out / "mlflow.db"
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0, "a rejected run created an MLflow run"


# --------------------------------------------------------------------------- config values

CONFIG_ROWS = [
    # (overrides, fragments the one error line must contain)
    (["federation.rounds=abc"], ["federation.rounds='abc'", "an integer >= 1"]),
    (["federation.rounds=0"], ["federation.rounds=0", "an integer >= 1"]),
    (["federation.rounds=1.5"], ["federation.rounds=1.5", "an integer >= 1"]),
    (["federation.local_epochs=0"], ["federation.local_epochs=0", "an integer >= 1"]),
    (["federation.batch_size=0"], ["federation.batch_size=0", "an integer >= 1"]),
    (["federation.eval_batch_size=-5"], ["federation.eval_batch_size=-5", "an integer >= 1"]),
    (["federation.eval_every=0"], ["federation.eval_every=0", "an integer >= 1"]),
    (["federation.clients_per_round=0"], ["federation.clients_per_round=0", "an integer >= 1"]),
    (["federation.dropout=1.0"], ["federation.dropout=1.0", "a number in [0, 1)"]),
    (["federation.dropout=-0.1"], ["federation.dropout=-0.1", "a number in [0, 1)"]),
    (["federation.dropout=half"], ["federation.dropout='half'", "a number in [0, 1)"]),
    (["federation.on_divergence=ignore"], ["federation.on_divergence='ignore'", "one of fail, drop"]),
    (["federation.backend=gpu"], ["federation.backend='gpu'", "one of serial, ray"]),
    (["federation.optimizer.lr=0"], ["federation.optimizer.lr=0", "a number > 0"]),
    (["federation.optimizer.lr=-0.1"], ["federation.optimizer.lr=-0.1", "a number > 0"]),
    (["federation.optimizer.lr=fast"], ["federation.optimizer.lr='fast'", "a number > 0"]),
    (["mode=distributed"], ["mode='distributed'", "one of federated, centralized"]),
    (["seed=-1"], ["seed=-1", "an integer >= 0"]),
    (["resume=3"], ["resume=3", "true, false or a checkpoint path"]),
    (["trainer.threads=0"], ["trainer.threads=0", "an integer >= 1"]),
    (["logger.flush_every_s=-1"], ["logger.flush_every_s=-1", "a number of seconds >= 0"]),
    (["logger.flush_every_s=often"], ["logger.flush_every_s='often'", "a number of seconds >= 0"]),
    (["strategy=perfedavg", "alpha=0"], ["strategy.alpha=0", "a number > 0"]),
    (["strategy=perfedavg", "strategy.alpha=-1"], ["strategy.alpha=-1", "a number > 0"]),
    (["strategy=perfedavg", "beta=-0.5"], ["strategy.beta=-0.5", "a number > 0"]),
    (["strategy=perfedavg", "delta=0"], ["strategy.delta=0", "a number > 0"]),
    (["strategy=perfedavg", "variant=xx"], ["strategy.variant='xx'", "one of fo, hf"]),
    (["strategy=perfedavg", "adapt_steps=-1"], ["strategy.adapt_steps=-1", "an integer >= 0"]),
    (["strategy=perfedavg", "adapt_steps=2.5"], ["strategy.adapt_steps=2.5", "an integer >= 0"]),
    (["strategy=finetune", "epochs=-1"], ["strategy.epochs=-1", "an integer >= 0"]),
    (["strategy=finetune", "lr_scale=0"], ["strategy.lr_scale=0", "a number > 0"]),
    (["strategy=fedrod", "strategy.generic_loss=focal"], ["strategy.generic_loss='focal'",
                                                           "one of balanced, criterion"]),
    (["strategy=fedrod", "strategy.personal_classes=some"], ["strategy.personal_classes='some'",
                                                              "one of all, seen"]),
    (["strategy._target_=nope.Missing"], ["strategy._target_='nope.Missing'", "an importable Strategy"]),
    (["data.classes=[N,S]"], ["data.aami=", "one symbol list for each class in data.classes ['N', 'S']",
                              "not in data.classes: ['V', 'F', 'Q']"]),
    (["data.classes=[N,N,V]"], ["data.classes=['N', 'N', 'V']", "distinct class names"]),
    (["loss=weighted", "loss.weights=inverse"], ["loss.weights='inverse'", "null, balanced, client"]),
    (["loss=focal", "loss.gamma=-1"], ["loss.gamma=-1", "a number in [0, 10]"]),
    (["loss=weighted", "loss.max_weight=0"], ["loss.max_weight=0", "a number > 0"]),
    (["loss.max_weight=10"], ["loss.max_weight=10.0", "loss.weights is null"]),
]


@pytest.mark.parametrize("overrides, needles", CONFIG_ROWS, ids=[" ".join(r[0]) for r in CONFIG_ROWS])
def test_bad_config_value(_synthetic_db_template, tmp_path, capsys, overrides, needles):
    cfg = make_cfg(_synthetic_db_template, tmp_path, *RUN, *overrides, "logger=mlflow")
    code, err = answer(cfg, capsys)
    assert_rejected(code, err, tuple(needles))
    assert_nothing_left(tmp_path, data_loaded=False)
    assert not (tmp_path / "outputs").exists()


def test_hydra_full_error_shows_the_traceback(_synthetic_db_template, tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(PflError, match="federation.rounds='abc'"):
        train_main(make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.rounds=abc"))


# --------------------------------------------------------------------------- data and partitions


def _copy_db(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _corrupt_header(db: Path) -> None:
    (db / "s02.hea").write_text("this is not a WFDB header\n")


def _truncate_signal(db: Path) -> None:
    dat = db / "s02.dat"
    dat.write_bytes(dat.read_bytes()[:1000])


DATA_ROWS = {
    # id: (prepare the data root -> its path, overrides, fragments)
    "empty data root": (lambda db, tmp: (tmp / "empty").mkdir() or tmp / "empty", ["data.records=all"],
                        ["no MIT-BIH records found", "empty", "has no RECORDS file", "PFL_DATA_DIR"]),
    "missing data root": (lambda db, tmp: tmp / "nowhere", ["data.records=all"],
                          ["no MIT-BIH records found", "nowhere", "does not exist"]),
    "data root is a file": (lambda db, tmp: (tmp / "file").write_text("x") and tmp / "file", ["data.records=all"],
                            ["no MIT-BIH records found", "file"]),
    "unknown record": (lambda db, tmp: db, ["data.records=[s01,zz]"],
                       ["unknown record name(s) ['zz']", "allowed are", "s01, s02"]),
    "corrupt header": (lambda db, tmp: _corrupt_header(_copy_db(db, tmp / "db")) or tmp / "db", [],
                       ["cannot read header file", "s02.hea"]),
    "truncated signal": (lambda db, tmp: _truncate_signal(_copy_db(db, tmp / "db")) or tmp / "db", [],
                         ["cannot read signal of record s02", "s02.dat"]),
    "client without test beats": (lambda db, tmp: db, ["partition.train_minutes=10"],
                                  ["client 's01' has no test beats", "0 test"]),
    "client without train beats": (lambda db, tmp: db, ["partition.train_minutes=0.01"],
                                   ["client 's01' has no train beats", "0 train"]),
    "clients_per_round above the clients": (lambda db, tmp: db, ["federation.clients_per_round=9"],
                                            ["federation.clients_per_round=9", "an integer in [1, 3]"]),
    "dropout leaving nobody": (lambda db, tmp: db, ["federation.clients_per_round=1", "federation.dropout=0.6"],
                               ["federation.dropout=0.6", "leaves at least one of the 1 clients"]),
    "perfedavg batch larger than a client": (lambda db, tmp: db, ["strategy=perfedavg", "federation.batch_size=512"],
                                             ["federation.batch_size=512", "disjoint batches"]),
    "resume path missing": (lambda db, tmp: db, ["resume=/nonexistent/last.pt"],
                            ["resume='/nonexistent/last.pt'", "no such checkpoint"]),
}


@pytest.mark.parametrize("row", list(DATA_ROWS))
def test_bad_data_or_partition(_synthetic_db_template, tmp_path, capsys, row):
    prepare, overrides, needles = DATA_ROWS[row]
    root = prepare(_synthetic_db_template, tmp_path)
    cfg = make_cfg(_synthetic_db_template, tmp_path, *RUN, f"data.root={root}", *overrides)
    code, err = answer(cfg, capsys)
    assert_rejected(code, err, tuple(needles))
    assert_nothing_left(tmp_path, data_loaded=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its permissions")
def test_unreadable_data_root(_synthetic_db_template, tmp_path, capsys):
    db = _copy_db(_synthetic_db_template, tmp_path / "db")
    db.chmod(0)
    try:
        code, err = answer(make_cfg(_synthetic_db_template, tmp_path, *RUN, f"data.root={db}"), capsys)
    finally:
        db.chmod(0o755)
    assert_rejected(code, err, (str(db),))
    assert_nothing_left(tmp_path, data_loaded=True)


def test_checkpoint_from_another_config(_synthetic_db_template, tmp_path, capsys):
    other = tmp_path / "other"
    train(make_cfg(_synthetic_db_template, other, *RUN, "federation.optimizer.lr=0.01"))
    (ckpt,) = (other / "outputs" / "checkpoints").glob("*/last.pt")
    cfg = make_cfg(_synthetic_db_template, tmp_path / "this", *RUN, f"resume={ckpt}")
    code, err = answer(cfg, capsys)
    assert_rejected(code, err, (f"resume='{ckpt}'", "comes from another config", "resume=false"))
    assert_nothing_left(tmp_path / "this", data_loaded=True)
    code, err = answer(make_cfg(_synthetic_db_template, tmp_path / "this", *RUN, f"resume={ckpt.parent}"), capsys)
    assert_rejected(code, err, ("a directory", "last.pt"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri, needles", [
    (f"http://127.0.0.1:{_closed_port()}", ["logger.tracking_uri='http://127.0.0.1:", "does not answer", "logger=none"]),
    ("sqlite:////proc/no/such/dir/mlflow.db", ["logger.tracking_uri='sqlite:////proc/no/such/dir/mlflow.db'"]),
], ids=["server not answering", "store cannot be created"])
def test_tracking_uri_that_does_not_answer(_synthetic_db_template, tmp_path, capsys, uri, needles):
    cfg = make_cfg(_synthetic_db_template, tmp_path, *RUN, "logger=mlflow", f"logger.tracking_uri={uri}")
    t0 = time.monotonic()
    code, err = answer(cfg, capsys)
    assert time.monotonic() - t0 < 60, "pfl waited too long on a dead tracking store"
    assert_rejected(code, err, tuple(needles))
    assert_nothing_left(tmp_path, data_loaded=True)


# --------------------------------------------------------------------------- the real console script

SCRIPT_ROWS = {
    # id: (arguments, expected exit code, fragments of stderr)
    "unknown strategy": (["strategy=foo"], 1, ["Could not find 'strategy/foo'", "Available options", "perfedavg"]),
    "unknown model": (["model=bar"], 1, ["Could not find 'model/bar'", "Available options", "cnn_lstm"]),
    "misspelt key": (["federation.round=5"], 1, ["Could not override 'federation.round'", "not in struct"]),
    "wrong type": (["federation.rounds=abc"], 2, ["error: federation.rounds='abc' is not allowed"]),
}


@pytest.fixture(scope="module")
def script_answers(_synthetic_db_template, tmp_path_factory):
    """Every SCRIPT_ROWS case, started at once: start-up dominates, and they overlap."""
    procs = {}
    for row, (args, _, _) in SCRIPT_ROWS.items():
        tmp = tmp_path_factory.mktemp("script")
        argv = [PFL, f"data.root={_synthetic_db_template}", "partition=patient", "model=cnn", *RUN,
                f"paths.root_dir={tmp}", f"hydra.run.dir={tmp / 'run'}", "logger=none", "trainer.progress=false",
                *args]  # last, so that they win over the settings above
        procs[row] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}), tmp)
    return {row: (p.communicate(timeout=300), p.returncode, tmp) for row, (p, tmp) in procs.items()}


@pytest.mark.parametrize("row", list(SCRIPT_ROWS))
def test_pfl_console_script(script_answers, row):
    (_, err), code, tmp = script_answers[row]
    _, expected_code, needles = SCRIPT_ROWS[row]
    assert code == expected_code, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    if expected_code == 2:
        assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, err
    assert not (tmp / "outputs" / "checkpoints").exists()
