"""OmegaConf resolvers used by conf/: registered on `import pfl`."""

from __future__ import annotations

from omegaconf import OmegaConf


def _window_len(window) -> int:
    return int(window["before"]) + int(window["after"])


def register() -> None:
    for name, fn in {"len": lambda seq: len(seq), "window_len": _window_len}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register()
