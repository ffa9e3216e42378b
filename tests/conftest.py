from __future__ import annotations

import os
from pathlib import Path

import pytest
import synth


@pytest.fixture(scope="session")
def _synthetic_db_template(tmp_path_factory) -> Path:
    return synth.write_synthetic_db(tmp_path_factory.mktemp("synthdb"))


@pytest.fixture
def synthetic_db(_synthetic_db_template, tmp_path) -> Path:
    """A fresh copy of a 6-record synthetic database (s01..s06, 7 minutes; s02 stores MLII
    second), safe to modify."""
    import shutil

    dst = tmp_path / "mitdb"
    shutil.copytree(_synthetic_db_template, dst)
    return dst


@pytest.fixture
def synthetic_cfg(synthetic_db, tmp_path):
    """The `data` config pointing at synthetic_db, with a per-test cache directory."""
    return synth.data_config(synthetic_db, tmp_path / "cache")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    d = os.environ.get("PFL_DATA_DIR")
    if not d:
        pytest.skip("PFL_DATA_DIR is not set: real MIT-BIH data tests need the mitdb directory")
    p = Path(d)
    if not (p / "RECORDS").is_file():
        pytest.skip(f"PFL_DATA_DIR={d} does not contain a mitdb RECORDS file")
    return p


@pytest.fixture(scope="session")
def real_cache_dir(tmp_path_factory) -> Path:
    """One beat cache for every real-data run of the session: built once, loaded warm after."""
    return tmp_path_factory.mktemp("real_beat_cache")
