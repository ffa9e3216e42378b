"""RR-interval features: the rhythm context that tells supraventricular beats from normal ones.

A premature atrial beat looks like a normal beat; what gives it away is that it comes early
(short pre-RR) and is followed by a compensatory pause (long post-RR) relative to the
patient's own rhythm. de Chazal et al. (IEEE TBME 2004) and most inter-patient work since use
these intervals, measured from the annotated R peaks of the same record:

- `pre`: t[i] - t[i-1], seconds; the record's first beat takes its post-RR (no beat before it);
- `post`: t[i+1] - t[i]; the record's last beat takes its pre-RR;
- `local`: the mean pre-RR of the `local_beats` beats around beat i (centered), or of beat i and
  the `local_beats - 1` before it when causal;
- `average`: the mean pre-RR of the whole record, or of the beats up to and including i when
  causal (a running mean: a monitor cannot know the record's future);
- ratios `pre_local`, `post_local`, `pre_average`, `post_average`, `post_pre`: rhythm relative
  to the patient's own rate, which is what transfers between patients;
- `local_sd`: the standard deviation (population) of the same pre-RRs `local` averages, and
  `local_cv` = local_sd / local: how irregular the rhythm around the beat is. In atrial
  fibrillation every beat's pre-RR is "premature" against the local mean; irregularity says
  that prematurity there is the rhythm, not an ectopic beat. But one premature beat and its
  pause make the 10 beats around it irregular too, so these cannot tell an ectopic beat in
  sinus rhythm from atrial fibrillation;
- `irregularity`: the median absolute change between successive pre-RRs over the
  `irregular_beats` beats around the beat (default 32) (centred; causal: the beat and those before it),
  over the median pre-RR of the same beats. An isolated premature beat and its pause change two
  or three of those successive intervals, which leaves the median at the sinus rhythm's small
  variation; in atrial fibrillation most successive intervals differ, and the median says so
  (the median successive difference is the robust core of RR-based AF detectors).

The intervals come from every beat annotation of the record that maps to a class of
`data.aami` (also beats whose window leaves the record and is dropped; with a reduced class
list, unmapped beats lengthen the intervals), in the record's native sampling rate, so resampling does not
round them. Causal mode (`data.rr.causal=true`) refuses the features that need the next beat
(`post` and its ratios). The one value that is never causal is the first beat's pre-RR: the
record holds nothing before it, so it takes the first interval, once per record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pfl.errors import ConfigError

#: the raw columns cached per beat, in this order
RAW = ("pre", "post", "local", "local_causal", "average", "average_causal", "local_sd", "local_sd_causal",
       "irregularity", "irregularity_causal")
#: feature name -> (numerator, denominator or None) over the raw columns; `local`/`average`
#: resolve to their causal columns when causal
FEATURES: dict[str, tuple[str, str | None]] = {
    "pre": ("pre", None),
    "post": ("post", None),
    "local": ("local", None),
    "average": ("average", None),
    "pre_local": ("pre", "local"),
    "post_local": ("post", "local"),
    "pre_average": ("pre", "average"),
    "post_average": ("post", "average"),
    "post_pre": ("post", "pre"),
    "local_sd": ("local_sd", None),
    "local_cv": ("local_sd", "local"),
    "irregularity": ("irregularity", None),
}
DEFAULT_FEATURES = ("pre", "post", "local", "average", "pre_local", "post_local")
LOCAL_BEATS = 10
#: beats over which `irregularity` takes its medians: long enough that an isolated ectopic beat
#: (two or three changed intervals) does not move them, short enough for paroxysmal episodes
IRREGULAR_BEATS = 32


def raw_intervals(beat_samples: np.ndarray, fs: float, local_beats: int = LOCAL_BEATS,
                  irregular_beats: int = IRREGULAR_BEATS) -> np.ndarray:
    """(n, len(RAW)) float64 intervals in seconds for the beats at `beat_samples` (sorted)."""
    t = np.asarray(beat_samples, dtype=np.float64) / float(fs)
    n = len(t)
    out = np.zeros((n, len(RAW)))
    if n < 2:  # a single beat has no interval at all
        return out
    d = np.diff(t)  # d[j] = t[j+1] - t[j]
    pre = np.concatenate([[d[0]], d])
    post = np.concatenate([d, [d[-1]]])
    c = np.concatenate([[0.0], np.cumsum(pre)])  # c[k] = sum of pre[0:k]
    c2 = np.concatenate([[0.0], np.cumsum(pre * pre)])

    def mean_over(lo: np.ndarray, hi: np.ndarray, sums: np.ndarray = c) -> np.ndarray:  # mean of pre[lo:hi]
        return (sums[hi] - sums[lo]) / (hi - lo)

    def sd_over(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(mean_over(lo, hi, c2) - mean_over(lo, hi) ** 2, 0.0))

    i = np.arange(n)
    k = int(local_beats)
    centred = (np.clip(i - k // 2, 0, None), np.clip(i - k // 2 + k, None, n))
    causal = (np.clip(i - k + 1, 0, None), i + 1)
    average = np.full(n, pre.mean())
    average_causal = mean_over(np.zeros(n, dtype=np.int64), i + 1)
    m = int(irregular_beats)
    wide = (np.clip(i - m // 2, 0, None), np.clip(i - m // 2 + m, None, n))
    wide_causal = (np.clip(i - m + 1, 0, None), i + 1)
    out[:] = np.stack([pre, post, mean_over(*centred), mean_over(*causal), average, average_causal,
                       sd_over(*centred), sd_over(*causal), _irregularity(pre, *wide),
                       _irregularity(pre, *wide_causal)], axis=1)
    return out


def _irregularity(pre: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per beat, median |pre[j] - pre[j-1]| over j in [max(lo + 1, 2), hi) over median pre[lo:hi]:
    the changes between the window's own intervals (m beats, m - 1 changes), leaving out the
    first beat's pre-RR, which is a copy of the second's (0 where no change is left). Windows
    padded with NaN, one nanmedian."""
    n = len(pre)
    width = int((hi - lo).max())
    idx = lo[:, None] + np.arange(width)[None, :]
    inside = idx < hi[:, None]
    safe = np.minimum(idx, n - 1)
    rr = np.where(inside, pre[safe], np.nan)
    step = np.abs(pre[safe] - pre[np.maximum(safe - 1, 0)])
    step = np.where(inside & (idx >= np.maximum(lo + 1, 2)[:, None]), step, np.nan)
    has = np.isfinite(step).any(axis=1)
    out = np.zeros(n)
    if has.any():
        out[has] = np.nanmedian(step[has], axis=1) / np.maximum(np.nanmedian(rr[has], axis=1), 1e-6)
    return out


def parse_rr(cfg: Any) -> dict[str, Any]:
    """The validated `data.rr` settings: features, causal, local_beats, irregular_beats, standardize."""
    d = dict(cfg or {})
    names = d.get("features", list(DEFAULT_FEATURES))
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ConfigError("data.rr.features", names, f"a non-empty list of {', '.join(FEATURES)}")
    names = [str(v) for v in names]
    bad = [v for v in names if v not in FEATURES]
    if bad or len(set(names)) != len(names):
        raise ConfigError("data.rr.features", bad or names, f"distinct names from {', '.join(FEATURES)}")
    causal = d.get("causal", False)
    if not isinstance(causal, bool):
        raise ConfigError("data.rr.causal", causal, "true or false")
    if causal:
        future = [v for v in names if "post" in FEATURES[v]]
        if future:
            raise ConfigError("data.rr.features", future, "features known at the beat when data.rr.causal=true "
                              "(post-RR needs the next beat): drop them or set data.rr.causal=false")
    local_beats = _beats(d, "local_beats", LOCAL_BEATS, 1, "an integer >= 1")
    irregular_beats = _beats(d, "irregular_beats", IRREGULAR_BEATS, 2, "an integer >= 2 (two intervals, one change)")
    standardize = d.get("standardize", False)
    if not isinstance(standardize, bool):
        raise ConfigError("data.rr.standardize", standardize, "true or false")
    return {"features": names, "causal": causal, "local_beats": local_beats, "irregular_beats": irregular_beats,
            "standardize": standardize}


def _beats(d: Mapping[str, Any], key: str, default: int, least: int, allowed: str) -> int:
    """A window length of `data.rr`: an integer (not a bool) of at least `least`."""
    value = d.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"data.rr.{key}", value, allowed)
    return value


def standardize(fed, k: int):
    """The federation with its last `k` input samples (the RR features) standardized by the
    mean and std of the federated clients' training beats, the same shift and scale for every
    client and split (the unseen clients' own beats never set them). The statistics
    {"mean": [...], "std": [...]} travel with it as `rr_stats` (None where nothing trains).

    Why: the beats are z-scored per beat while the RR features sit near 0.8-1.0 with a spread of
    0.2, so an S beat's shorter interval is a small change on a large offset; standardized, it
    reaches the network at the scale of the beat samples. In a real federation the sums behind
    the mean and std are two vectors per client, cheap to aggregate (securely, if need be)."""
    import dataclasses

    import torch

    from pfl.data.types import Split

    rows = [c.train.x[:, 0, -k:].double() for c in fed.training_clients if len(c.train)]
    if not rows or k <= 0:
        return fed
    pooled = torch.cat(rows)
    mean, std = pooled.mean(0), pooled.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant feature is left centred

    def scaled(sp: Split) -> Split:
        if not len(sp):
            return sp
        x = sp.x.clone()
        x[..., -k:] = ((x[..., -k:].double() - mean) / std).to(x.dtype)
        return dataclasses.replace(sp, x=x)

    clients = [dataclasses.replace(c, train=scaled(c.train), val=scaled(c.val), test=scaled(c.test))
               for c in fed.clients]
    return dataclasses.replace(fed, clients=clients, rr_stats={"mean": mean.tolist(), "std": std.tolist()})


def select(raw: np.ndarray, rr: Mapping[str, Any]) -> np.ndarray:
    """(n, k) float32 features named in rr['features'] from the raw columns."""
    col = {name: raw[:, j] for j, name in enumerate(RAW)}
    if rr["causal"]:
        for name in ("local", "average", "local_sd", "irregularity"):
            col[name] = col[f"{name}_causal"]
    feats = []
    for name in rr["features"]:
        num, den = FEATURES[name]
        v = col[num] if den is None else col[num] / np.maximum(col[den], 1e-6)
        feats.append(v)
    return np.stack(feats, axis=1).astype(np.float32) if feats else np.zeros((len(raw), 0), np.float32)


FEATURE_SETS = ("beat", "rr")


def parse_features(value: Any) -> tuple[str, ...]:
    """`data.features`: [beat] or [beat, rr]."""
    if isinstance(value, str):
        value = [value]
    names = tuple(str(v) for v in (value or ()))
    if not names or names[0] != "beat" or len(set(names)) != len(names) or any(v not in FEATURE_SETS for v in names):
        raise ConfigError("data.features", list(names), "[beat] or [beat, rr] (the beat window always comes first)")
    return names


def n_features(features: Any, rr: Any) -> int:
    """How many RR features the model input carries (0 without `rr` in data.features)."""
    return len(parse_rr(rr)["features"]) if "rr" in parse_features(features) else 0


def pack(x: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """One model input per beat: the window(s) (n, C, L) then the k features on every channel,
    (n, C, L + k). One tensor keeps every strategy, backend, checkpoint and the logged model's
    signature unchanged; a model with `rr_features=k` splits the last k samples off again."""
    x3 = x[:, None, :] if x.ndim == 2 else x
    k = feats.shape[1]
    tail = np.broadcast_to(feats[:, None, :], (x3.shape[0], x3.shape[1], k))
    return np.ascontiguousarray(np.concatenate([x3, tail], axis=2), dtype=np.float32)
