"""Small synthetic WFDB databases shaped like MIT-BIH, for fast tests without the real data.

Each record has two leads at 360 Hz (MLII and V1; one record stores MLII second, as 114 does
in mitdb), beats whose morphology depends on their AAMI class so a small model can learn them,
non-beat annotations ('+' rhythm changes, '~' noise) that the loader must skip, and one beat at
each very edge of the record whose window cannot fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import wfdb
from omegaconf import DictConfig, OmegaConf

FS = 360
CLASSES = ("N", "S", "V", "F", "Q")
# Symbols drawn for each class (first one most often); all are AAMI beat symbols.
SYMBOLS = {
    "N": ("N", "N", "N", "N", "L", "R", "e", "j"),
    "S": ("A", "A", "a", "J", "S"),
    "V": ("V", "V", "V", "E"),
    "F": ("F",),
    "Q": ("/", "f", "Q"),
}
# Class mixes cycled over records so that records (and so clients) really differ.
PROFILES = (
    (0.93, 0.03, 0.02, 0.01, 0.01),  # mostly normal
    (0.60, 0.10, 0.20, 0.05, 0.05),  # arrhythmia-heavy
    (0.80, 0.12, 0.05, 0.02, 0.01),  # supraventricular
    (0.70, 0.03, 0.20, 0.04, 0.03),  # ventricular
)
# Sample offsets of the edge beats: too close to the start/end for a 90/166 window.
EDGE_START = 20
EDGE_END_FROM_END = 30
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _names(records: int | Sequence[str]) -> list[str]:
    if isinstance(records, int):
        return [f"s{i + 1:02d}" for i in range(records)]
    return [str(r) for r in records]


def _gauss(t: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - mu) / sigma) ** 2)


def _beat_shape(cls: str, t: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Waveform (MLII, V1) of one beat with its R peak at time r (seconds)."""
    if cls == "N":
        m = (
            0.15 * _gauss(t, r - 0.16, 0.02)
            + 1.0 * _gauss(t, r, 0.012)
            + 0.3 * _gauss(t, r + 0.25, 0.04)
        )
    elif cls == "S":
        # Premature, with an abnormal (inverted) P wave.
        m = (
            -0.12 * _gauss(t, r - 0.12, 0.015)
            + 0.9 * _gauss(t, r, 0.012)
            + 0.25 * _gauss(t, r + 0.22, 0.04)
        )
    elif cls == "V":
        # Wide QRS, no P wave, discordant T.
        m = 1.4 * _gauss(t, r, 0.04) - 0.5 * _gauss(t, r + 0.3, 0.06)
    elif cls == "F":
        m = (
            0.1 * _gauss(t, r - 0.16, 0.02)
            + 0.7 * _gauss(t, r, 0.025)
            - 0.1 * _gauss(t, r + 0.27, 0.05)
        )
    else:  # Q: paced: pacing spike before a wide complex.
        m = (
            1.2 * _gauss(t, r - 0.04, 0.003)
            + 0.8 * _gauss(t, r, 0.035)
            + 0.2 * _gauss(t, r + 0.28, 0.05)
        )
    v1 = -0.6 * m + 0.1 * _gauss(t, r + 0.05, 0.03)
    return m, v1


def write_record(
    directory: Path,
    name: str,
    *,
    minutes: float = 7.0,
    probs: Sequence[float] = PROFILES[0],
    mlii_second: bool = False,
    seed: int = 0,
) -> dict[str, int]:
    """Write `<name>.hea/.dat/.atr` into directory; returns the count of each beat symbol written."""
    rng = np.random.default_rng(seed)
    n = int(round(minutes * 60 * FS))
    t = np.arange(n) / FS
    mlii = 0.05 * np.sin(2 * np.pi * 0.2 * t) + 0.02 * rng.standard_normal(n)
    v1 = 0.04 * np.sin(2 * np.pi * 0.15 * t + 1.0) + 0.02 * rng.standard_normal(n)

    # Beats at the very edges first (their windows do not fit), then a regular rhythm.
    samples = [EDGE_START]
    classes = ["N"]
    pos = 0.6
    end = (n - 1) / FS - 0.6
    while pos < end:
        cls = CLASSES[rng.choice(len(CLASSES), p=np.asarray(probs) / np.sum(probs))]
        if cls == "S":
            pos -= 0.2  # premature
        samples.append(int(round(pos * FS)))
        classes.append(cls)
        pos += 0.8 + 0.05 * rng.standard_normal()
        if cls in ("V", "S"):
            pos += 0.25  # compensatory pause
    samples.append(n - EDGE_END_FROM_END)
    classes.append("N")

    for s, cls in zip(samples, classes, strict=True):
        r = s / FS
        lo, hi = max(0, s - int(0.5 * FS)), min(n, s + int(0.6 * FS))
        m, v = _beat_shape(cls, t[lo:hi], r)
        mlii[lo:hi] += m
        v1[lo:hi] += v

    symbols = [SYMBOLS[c][rng.integers(len(SYMBOLS[c]))] for c in classes]
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1

    # Non-beat annotations: rhythm changes ('+') and noise ('~') between beats.
    ann = list(zip(samples, symbols, [""] * len(samples), strict=True))
    ann.append((1, "+", "(N"))
    for k in range(5, len(samples) - 5, 97):
        ann.append((samples[k] + 40, "~", ""))
        ann.append((samples[k + 1] - 30, "+", "(AB" if k % 2 else "(N"))
    ann.sort(key=lambda a: a[0])

    signals = np.column_stack([v1, mlii] if mlii_second else [mlii, v1])
    sig_name = ["V1", "MLII"] if mlii_second else ["MLII", "V1"]
    wfdb.wrsamp(
        name,
        fs=FS,
        units=["mV", "mV"],
        sig_name=sig_name,
        p_signal=signals,
        fmt=["212", "212"],
        adc_gain=[200.0, 200.0],
        baseline=[1024, 1024],
        write_dir=str(directory),
    )
    wfdb.wrann(
        name,
        "atr",
        sample=np.array([a[0] for a in ann], dtype=np.int64),
        symbol=[a[1] for a in ann],
        aux_note=[a[2] for a in ann],
        fs=FS,
        write_dir=str(directory),
    )
    return counts


def write_synthetic_db(
    directory: str | Path,
    records: int | Sequence[str] = 6,
    minutes: float = 7.0,
    seed: int = 0,
    mlii_second: Iterable[str] | None = None,
) -> Path:
    """Write a small MIT-BIH-like database (records + RECORDS file) and return its directory.

    records: a count (names s01, s02, ...) or the names to use. The class mix cycles through
    PROFILES by record position. MLII is stored second in the records named in mlii_second
    (default: the second record).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = _names(records)
    second = set(names[1:2]) if mlii_second is None else {str(r) for r in mlii_second}
    for i, name in enumerate(names):
        write_record(
            directory,
            name,
            minutes=minutes,
            probs=PROFILES[i % len(PROFILES)],
            mlii_second=name in second,
            seed=seed * 1000 + i,
        )
    (directory / "RECORDS").write_text("".join(f"{r}\n" for r in names))
    return directory


def data_config(root: str | Path, cache_dir: str | Path, **overrides) -> DictConfig:
    """The project's `data` config (conf/data/mitdb.yaml) pointed at root, with overrides.

    Synthetic records are not paced, so the paced list is emptied unless overridden.
    """
    cfg = OmegaConf.load(CONF_DIR / "data" / "mitdb.yaml")
    cfg.root = str(root)
    cfg.cache_dir = str(cache_dir)
    cfg.download = False
    cfg.paced_records = []
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg
