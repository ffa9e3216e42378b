"""The cluster launcher preset (conf/hydra/launcher/slurm.yaml) composes with the plugin."""

from __future__ import annotations

import pytest
from compose import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class


def test_slurm_launcher_preset_composes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher is not installed (pip install hydra-submitit-launcher)")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "experiment=seed_phase3",
                                           "hydra.launcher.partition=cpu", f"paths.root_dir={tmp_path}"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"  # the plugin really provides it
    assert launcher.partition == "cpu"
    assert launcher.cpus_per_task == 2 and launcher.timeout_min == 240
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "slurm"
    # The study's sweep survives the launcher change: one Slurm job per strategy.
    assert cfg.hydra.sweeper.params.strategy == "none,finetune,perfedavg"
