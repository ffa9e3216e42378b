"""`pfl-data`: load the beats, build the configured federation and print its statistics.

pfl-data partition=dirichlet partition.alpha=0.3 partition.n_clients=10
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pfl.cli import CONF_DIR, fail, with_short_forms
from pfl.errors import PflError


def run(cfg: DictConfig):
    from pfl.data.partitions import build_federation
    from pfl.data.sources import load_beats
    from pfl.data.stats import print_stats

    beats = load_beats(cfg.data)
    fed = build_federation(beats, cfg.partition, int(cfg.seed))
    stats = print_stats(fed)
    print_sources(beats, str(cfg.data.get("database", "data")))
    return stats


def sources(beats, default: str = "data") -> list[dict]:
    """Per database: records, beats, the records' own sampling rates, the beats' rate, leads."""
    from pfl.data.partitions import database_of

    out: dict[str, dict] = {}
    for rid, rb in beats.records.items():
        d = out.setdefault(database_of(rid) or default, {"records": 0, "beats": 0, "native_hz": set(),
                                                         "hz": set(), "leads": set()})
        d["records"] += 1
        d["beats"] += len(rb)
        d["native_hz"].add(float(rb.native_fs if rb.native_fs is not None else rb.fs))
        d["hz"].add(float(rb.fs))
        d["leads"].add(rb.lead or "?")
    return [{"database": k, **v} for k, v in out.items()]


def print_sources(beats, default: str = "data") -> None:
    def hz(values):
        return "/".join(f"{v:g}" for v in sorted(values))

    for d in sources(beats, default):
        rate = hz(d["native_hz"]) + (f" Hz resampled to {hz(d['hz'])} Hz" if d["native_hz"] != d["hz"] else " Hz")
        print(f"source {d['database']}: {d['records']} records, {d['beats']} beats, {rate}, "
              f"leads {', '.join(sorted(d['leads']))}")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except PflError as e:
        fail(e)


main = with_short_forms(_main)

if __name__ == "__main__":
    main()
