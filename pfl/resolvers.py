"""OmegaConf resolvers used by conf/: registered on `import pfl`."""

from __future__ import annotations

from omegaconf import OmegaConf


def _window_len(window) -> int:
    return int(window["before"]) + int(window["after"])


def _in_channels(extra_leads) -> int:
    """1 + the extra leads: the model's input channels."""
    return 1 + len(extra_leads or ())


def _rr_features(features, rr) -> int:
    from pfl.data.rr import n_features

    return n_features(features, rr)


def _cores() -> int:
    """The cores this process may run on (a Slurm job's or container's CPU set, not the node's)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def register() -> None:
    for name, fn in {"len": lambda seq: len(seq), "window_len": _window_len, "in_channels": _in_channels,
                     "rr_features": _rr_features, "cores": _cores}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register()
