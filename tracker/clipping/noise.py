"""Annealed Gaussian gradient noise, added after clipping (Neelakantan et al. 2015, "Adding Gradient Noise
Improves Learning for Very Deep Networks", arXiv:1511.06807):

    g_t <- g_t + N(0, sigma_t^2),    sigma_t^2 = eta / (1 + t)^gamma,    gamma = 0.55 in the paper

with t the 0-based optimizer step. The noise at step t depends only on (seed, t): each step reseeds a
per-device torch.Generator, so a resumed run draws the same noise and there is no generator state to save.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .base import ClipSpecError, fmt_num, require_below_float32_max

if TYPE_CHECKING:
    from tracker.distributed import Shards

__all__ = ["GradientNoise"]

# A large odd multiplier spreads (seed, step) pairs over the 63-bit seed space without collisions in practice.
_SEED_STRIDE = 0x9E3779B97F4A7C15


class GradientNoise:
    """``noise(eta[,gamma][,seed=S])``: eta > 0 is the variance at step 0, gamma >= 0 its decay exponent."""

    def __init__(self, eta: float, gamma: float = 0.55, seed: int = 0) -> None:
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not (math.isfinite(eta) and eta > 0):
            raise ClipSpecError(f"noise eta must be a finite number > 0, got {eta!r}")
        eta = require_below_float32_max(eta, "noise eta")
        if (
            isinstance(gamma, bool)
            or not isinstance(gamma, int | float)
            or not (math.isfinite(gamma) and gamma >= 0)
        ):
            raise ClipSpecError(f"noise gamma must be a finite number >= 0, got {gamma!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ClipSpecError(f"noise seed must be an integer >= 0, got {seed!r}")
        self.eta, self.gamma, self.seed = float(eta), float(gamma), seed
        self._generators: dict[torch.device, torch.Generator] = {}

    @property
    def spec(self) -> str:
        seed = f",seed={self.seed}" if self.seed else ""
        return f"noise({fmt_num(self.eta)},{fmt_num(self.gamma)}{seed})"

    def sigma(self, step: int) -> float:
        """Standard deviation of the noise at 0-based step ``step``."""
        return math.sqrt(self.eta / (1.0 + step) ** self.gamma)

    def _generator(self, device: torch.device, seed: int) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        # Reseeding is a host-side operation, also for CUDA generators.
        gen.manual_seed(seed % (2**63))
        return gen

    @torch.no_grad()
    def apply_(self, grads: Sequence[Tensor], step: int, shards: Shards | None = None) -> None:
        """Add N(0, sigma(step)^2) to every element of every gradient, in place.

        ``shards`` (FSDP2: ``grads`` are local shards): each tensor then draws from its own seed, and each
        shard of a split tensor from a different one. Drawn in one stream per device as without shards,
        every rank would add the same noise to its part of a tensor (the parts' noise perfectly
        correlated) and the stream would drift apart between ranks after the first uneven shard, so a
        replicated tensor would get different noise on different ranks.
        """
        sigma = self.sigma(step)
        base = self.seed * _SEED_STRIDE + step
        seeded: set[torch.device] = set()
        for i, g in enumerate(grads):
            if shards is not None:
                seed = (base * _SEED_STRIDE + i + 1) * _SEED_STRIDE + shards.shard_index(i)
                gen = self._generator(g.device, seed)
            elif g.device not in seeded:
                gen = self._generator(g.device, base)
                seeded.add(g.device)
            else:
                gen = self._generators[g.device]
            # Drawn in the gradient's own dtype, element for element: a float16 gradient gets float16 noise.
            g.add_(torch.randn(g.shape, generator=gen, device=g.device, dtype=g.dtype), alpha=sigma)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GradientNoise) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return f"GradientNoise({self.spec!r})"
