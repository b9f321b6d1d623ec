"""Where a run computes and in what precision: device resolution, autocast and the fp16 gradient scaler.

``resolve_device("auto")`` is CUDA when available, else the CPU; a device that
is asked for by name and is not present is a :class:`~reglab.core.ConfigError`
raised before anything trains. :class:`Precision` holds the autocast context of
the forward pass (``bf16``/``fp16``; parameters and optimizer state stay in
their own dtype, float32 usually) and makes the ``torch.amp.GradScaler`` that
``fp16`` needs::

    device = resolve_device("cuda:1")                     # ConfigError if there is no second GPU
    precision = Precision("bf16", device)
    with precision.autocast():
        outputs = model(x)
    scaler = precision.grad_scaler()                      # None unless fp16
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import torch

from reglab.core.errors import ConfigError

#: The accepted values of ``train.precision`` and the autocast dtype of each (None: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: ``train.device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: Any = "auto", *, field: str = "device") -> torch.device:
    """The ``torch.device`` that ``device`` names, checked to be present on this machine.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"``, or a ``torch.device``.
        field: the name used in error messages (``train.device`` in configs).

    Raises:
        ConfigError: an unknown device string, or a device this machine does not have.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"{field} must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{field} is {device!r} but CUDA is not available on this machine (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'no'}); use 'auto' or 'cpu', or install a CUDA build of torch"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"{field} is {device!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
        return torch.device("cuda", index)
    if device == "mps" and not _mps_available():
        raise ConfigError(f"{field} is 'mps' but the MPS backend is not available on this machine; use 'auto'")
    return torch.device(device)


class Precision:
    """The numeric precision of a run's forward pass on ``device``.

    - ``"32"``: no autocast, no scaler (bitwise the plain float32 computation).
    - ``"bf16"``: the forward pass (model, loss, penalties) under
      ``torch.autocast(device.type, torch.bfloat16)``; no scaler (bfloat16 has
      float32's exponent range).
    - ``"fp16"``: autocast to float16 and a ``torch.amp.GradScaler``; not
      supported on the CPU (use ``bf16`` there).

    Args:
        precision: ``"32"``, ``"bf16"`` or ``"fp16"``.
        device: the device the run computes on.
        field: the name used in error messages.

    Raises:
        ConfigError: an unknown precision, or ``fp16`` on a CPU.
    """

    def __init__(self, precision: str = "32", device: torch.device | str = "cpu", *, field: str = "precision"):
        if precision not in PRECISIONS:
            raise ConfigError(f"{field} must be one of '32', 'bf16', 'fp16', got {precision!r}")
        self.device = torch.device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise ConfigError(
                f"{field} 'fp16' is not supported on the CPU (no fast float16 kernels, and the gradient scaler "
                "it needs is meant for accelerators); use 'bf16' for mixed precision on a CPU, or '32'"
            )
        self.name = precision
        self.dtype = PRECISIONS[precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to this precision's dtype, or a null context for ``"32"``."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A new ``torch.amp.GradScaler`` for ``fp16``; None otherwise."""
        return torch.amp.GradScaler(self.device.type) if self.name == "fp16" else None

    def __repr__(self) -> str:
        return f"Precision({self.name!r}, device={str(self.device)!r})"


def move_batch(batch: tuple, device: torch.device, dtype: torch.dtype | None = None) -> tuple:
    """Each tensor of ``batch`` on ``device`` (``non_blocking``), floating ones cast to ``dtype`` when given."""

    def move(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        cast = dtype if dtype is not None and t.is_floating_point() and t.dtype != dtype else None
        return t.to(device=device, dtype=cast, non_blocking=True)

    return tuple(move(t) for t in batch)
