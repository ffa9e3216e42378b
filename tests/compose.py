"""Composing the real conf/ for tests, pointed at synthetic data and a temporary output tree."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import pfl  # noqa: F401  (config resolvers)
from pfl.shortforms import expand

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

FAST = (
    "partition=patient",
    "model=cnn",
    "federation.rounds=2",
    "federation.local_epochs=1",
    "federation.batch_size=32",
    "logger=none",
    "trainer.progress=false",
    # One intra-op thread: tests run beside other processes, and oversubscribed threads made the
    # same run ten times slower on 2 shared cores.
    "trainer.threads=1",
)


def make_cfg(db: Path, tmp_path: Path, *overrides: str, fast: bool = True) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=expand([
                f"data.root={db}",
                f"paths.root_dir={tmp_path}",
                *(FAST if fast else ()),
                *overrides,
            ], str(CONF_DIR)),
        )
