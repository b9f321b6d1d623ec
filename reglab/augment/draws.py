"""Random draws and input checks shared by the augmentations (erasing, mixing, dropout).

Positions and sizes are drawn on the CPU in float64 (on the generator's device
when a generator is given), a fixed number of draws per call, so a run does
not depend on the device the batch lives on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reglab.core import ConfigError, ShapeError


def check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def uniform_draws(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """U[0, 1) draws in float64 on the CPU, from ``generator`` or torch's global generator."""
    if generator is None:
        return torch.rand(shape, dtype=torch.float64)
    return torch.rand(shape, dtype=torch.float64, generator=generator, device=generator.device).cpu()


def randint_from_uniform(high: Tensor | int, u: Tensor) -> Tensor:
    """floor(u * high) as int64, clamped to [0, high - 1]: uniform on {0, ..., high - 1} for u ~ U[0, 1)."""
    high = torch.as_tensor(high, dtype=torch.float64)
    return torch.minimum(torch.floor(u * high), (high - 1).clamp(min=0)).long()


def spatial_dims(owner: str, inputs: Tensor, allow_1d: bool = True) -> int:
    """Number of trailing spatial dimensions of a batch: 1 for (n, L) or (n, c, L), 2 for (n, c, h, w).

    Raises ConfigError for non-floating inputs and ShapeError for other shapes.
    """
    if not isinstance(inputs, Tensor):
        raise ConfigError(f"{owner} needs a tensor of inputs, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise ConfigError(
            f"{owner} needs floating-point inputs, got {inputs.dtype}; "
            "remove it from `augment` for token tasks such as modular_arithmetic"
        )
    if inputs.ndim == 4:
        return 2
    if allow_1d and inputs.ndim in (2, 3):
        return 1
    wanted = "(n, c, h, w) images, (n, L) or (n, c, L) signals" if allow_1d else "(n, c, h, w) images"
    raise ShapeError(f"{owner} needs a batch of {wanted}, got inputs of shape {tuple(inputs.shape)}")
