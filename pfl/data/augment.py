"""Training-time beat augmentation (`augment=` config group): random distortions that keep a
beat's class, drawn afresh for every training batch.

A patient-specific client trains on about 300 beats of its first minutes and is tested on the
next 25; a handful of S beats there is all it sees of the class. The distortions stand for what
changes over half an hour of the same patient's ECG without changing the beat's class:

- `shift`: the window moves by s samples, s uniform in [-shift, shift] per beat (the annotated
  R peak's jitter), the edge sample repeated where the window runs out;
- `scale`: each lead of a beat multiplied by exp(scale * z), z ~ N(0, 1) (gain and electrode
  contact; a log-normal factor, so it never flips the sign);
- `wander`: a baseline sinusoid a * sin(2 pi f t / window + phase) per lead, a ~ U(0, wander),
  f ~ U(0, 1) cycles per window, phase ~ U(0, 2 pi) (respiration and movement left over
  after the band-pass);
- `noise`: Gaussian noise of std `noise` on every sample (muscle and mains residue).

Amplitudes are in the units of the normalized beat (z-scored per beat by default). Only the
window is touched: the RR features after it (pfl.models.inputs) pass through unchanged.
Applied in that order; a setting at 0 draws nothing. The draws come from the batch loader's own
generator, seeded by (seed, round, client, tag), so a run is reproducible and resumes exactly,
and the batches' order is the same with and without augmentation.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pfl import validation as v
from pfl.errors import ConfigError

#: the settings, each 0 when off
SETTINGS = ("shift", "scale", "wander", "noise")


class BeatAugment:
    """Distorts the beat window of a (batch, channels, window + rr_features) tensor; picklable."""

    def __init__(self, shift: int = 0, scale: float = 0.0, wander: float = 0.0, noise: float = 0.0,
                 rr_features: int = 0, window: int | None = None, peak: int | None = None):
        # At most a quarter of the window, and never so far that the R peak (at index `peak`,
        # data.window.before) leaves it.
        limit = None if window is None else max(window // 4, 0)
        if window is not None and peak is not None:
            limit = max(min(limit, peak, window - 1 - peak), 0)
        self.shift = v.integer("augment.shift", shift, minimum=0, maximum=limit)
        self.scale = _nonneg("augment.scale", scale)
        self.wander = _nonneg("augment.wander", wander)
        self.noise = _nonneg("augment.noise", noise)
        self.rr_features = v.integer("model.rr_features", rr_features, minimum=0)

    @property
    def active(self) -> bool:
        return bool(self.shift or self.scale or self.wander or self.noise)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = self.rr_features
        beat = x[..., :x.shape[-1] - k] if k else x
        n, c, w = beat.shape
        dev, dt = beat.device, beat.dtype

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=dev, dtype=dt)

        if self.shift:
            s = torch.randint(-self.shift, self.shift + 1, (n, 1, 1), generator=generator, device=dev)
            idx = (torch.arange(w, device=dev) - s).clamp_(0, w - 1).expand(n, c, w)
            beat = beat.gather(-1, idx)
        if self.scale:
            beat = beat * torch.exp(self.scale * torch.randn((n, c, 1), generator=generator, device=dev, dtype=dt))
        if self.wander:
            amp, freq, phase = uniform(n, c, 1) * self.wander, uniform(n, c, 1), uniform(n, c, 1) * (2 * math.pi)
            t = torch.arange(w, device=dev, dtype=dt) / w
            beat = beat + amp * torch.sin(2 * math.pi * freq * t + phase)
        if self.noise:
            beat = beat + self.noise * torch.randn((n, c, w), generator=generator, device=dev, dtype=dt)
        return torch.cat([beat, x[..., w:]], dim=-1) if k else beat

    def __repr__(self) -> str:
        return (f"BeatAugment(shift={self.shift}, scale={self.scale}, wander={self.wander}, noise={self.noise}, "
                f"rr_features={self.rr_features})")


def _nonneg(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(key, value, "a number >= 0 (0 = off)")
    return float(value)


def build_augment(cfg: Any, rr_features: int = 0, window: int | None = None,
                  peak: int | None = None) -> BeatAugment | None:
    """The `augment` config group -> a BeatAugment, or None when every setting is 0. `window`:
    the beat window's length; `peak`: the R peak's index in it (data.window.before)."""
    if not cfg:
        return None
    settings = {key: cfg.get(key, 0) for key in SETTINGS}
    aug = BeatAugment(**settings, rr_features=rr_features, window=window, peak=peak)
    return aug if aug.active else None
