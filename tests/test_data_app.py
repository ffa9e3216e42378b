"""`pfl-data` (pfl.data.app) end to end on synthetic records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_app(tmp_path, *overrides, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("PFL_DATA_DIR", "HYDRA_FULL_ERROR")}
    e.update(PFL_ROOT_DIR=str(tmp_path), COLUMNS="160", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "pfl.data.app", *overrides],
        cwd=REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def db(synthetic_db):
    return str(synthetic_db)


def test_prints_statistics(tmp_path, db, monkeypatch, capsys):
    from pfl.data import app

    monkeypatch.setenv("PFL_ROOT_DIR", str(tmp_path))
    monkeypatch.delenv("PFL_DATA_DIR", raising=False)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "pfl-data",
            f"data.root={db}",
            "partition=dirichlet",
            "partition.n_clients=3",
            "partition.alpha=0.3",
            "partition.min_samples=50",
            "partition.max_beats=null",
            "seed=1",
        ],
    )
    app.main()
    out = capsys.readouterr().out
    assert "Federation dirichlet: 3 clients" in out
    assert "client_2" in out and "mean JSD over clients" in out
    # The cache went under the configured output directory (PFL_ROOT_DIR).
    assert list((tmp_path / "outputs" / "cache" / "beats").glob("*/s01.npz"))


def test_patient_partition_via_env_data_dir(tmp_path, db, monkeypatch, capsys):
    from pfl.data import app

    monkeypatch.setenv("PFL_ROOT_DIR", str(tmp_path))
    monkeypatch.setenv("PFL_DATA_DIR", db)
    monkeypatch.setattr(sys, "argv", ["pfl-data", "partition=patient"])
    app.main()
    assert "Federation patient: 6 clients" in capsys.readouterr().out


def main_in_process(tmp_path, monkeypatch, *overrides):
    from pfl.data import app

    monkeypatch.setenv("PFL_ROOT_DIR", str(tmp_path))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("PFL_DATA_DIR", raising=False)
    monkeypatch.setattr(sys, "argv", ["pfl-data", *overrides])
    app.main()


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha=0.0 is not allowed"),
        (["partition=dirichlet", "partition.n_clients=100000"], "partition.n_clients=100000"),
        (["data.lead=V9", "data.lead_fallback=[]", "partition=patient"], "lead 'V9' not found"),
        (["data.records=[s01,zz]", "partition=patient"], "unknown record name(s) ['zz']"),
        (["data.root=/nonexistent/mitdb", "data.download=false"], "/nonexistent/mitdb"),
        (
            [
                "partition.sites.community_clinic.records=[s01]",
                "partition.sites.general_hospital.records=[s01]",
                "partition.sites.cardiac_center.records=[s02]",
            ],
            "partition.sites=['s01']",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, db, monkeypatch, capsys, overrides, message):
    root = [] if any(o.startswith("data.root") for o in overrides) else [f"data.root={db}"]
    with pytest.raises(SystemExit) as e:
        main_in_process(tmp_path, monkeypatch, *root, *overrides)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_bad_input_in_a_subprocess(tmp_path, db):
    r = run_app(tmp_path, f"data.root={db}", "data.records=[s01,zz]")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown record name(s) ['zz']")
    assert "Traceback" not in r.stderr


def test_full_error_reraises(tmp_path, db, monkeypatch):
    from pfl.errors import ConfigError

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setenv("PFL_ROOT_DIR", str(tmp_path))
    monkeypatch.setattr(
        sys, "argv", ["pfl-data", f"data.root={db}", "partition=dirichlet", "partition.alpha=-1"]
    )
    from pfl.data import app

    with pytest.raises(ConfigError, match="partition.alpha"):
        app.main()
