"""`pfl-data`: load the beats, build the configured federation and print its statistics.

pfl-data partition=dirichlet partition.alpha=0.3 partition.n_clients=10
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pfl.cli import CONF_DIR, fail, with_short_forms
from pfl.errors import PflError


def run(cfg: DictConfig):
    from pfl.data.mitdb import load_beats
    from pfl.data.partitions import build_federation
    from pfl.data.stats import print_stats

    beats = load_beats(cfg.data)
    fed = build_federation(beats, cfg.partition, int(cfg.seed))
    return print_stats(fed)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except PflError as e:
        fail(e)


main = with_short_forms(_main)

if __name__ == "__main__":
    main()
