"""Checkpoints of a training run: written atomically, the last few kept, read back with ``weights_only``.

A :class:`Checkpoints` folder holds files ``step-<N>.pt``; each is a dict of
tensors and plain values (what :meth:`reglab.train.Trainer.state_dict` returns
plus the config hash of the run), so ``torch.load(..., weights_only=True)``
reads it without unpickling code. A file is written to a temporary name in the
same folder, flushed to disk and renamed over its final name with
``os.replace``, so a process killed while writing leaves either the old set of
files or the new one, never a torn file under a checkpoint's name.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reglab.core import ConfigError, ReglabError

_NAME = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(ReglabError):
    """A checkpoint cannot be written or read, or belongs to another config."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint holds the run of another config (its config hash differs)."""


def rng_state() -> dict[str, Any]:
    """The state of every global generator a run draws from: torch's (CPU and each CUDA device), Python's
    ``random`` and NumPy's legacy global one, as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """The checkpoint folder of one run.

    Args:
        folder: where the files go (created if missing).
        keep: how many of the newest checkpoints to keep, >= 1.
        config_hash: the run's config hash; written into every checkpoint, and a checkpoint with another one is
            refused on load (None: not checked).

    Raises:
        ConfigError: the folder cannot be created or written (checked here, before anything trains).
    """

    def __init__(self, folder: str | os.PathLike[str], *, keep: int = 2, config_hash: str | None = None):
        self.folder, self.keep, self.config_hash = Path(folder), keep, config_hash
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".probe-"):
                pass
        except OSError as err:
            raise ConfigError(
                f"train.checkpoint_every: cannot write checkpoints to {str(self.folder)!r} ({err.strerror or err}); "
                "put the store in a writable folder (checkpoints are kept next to it) or leave checkpoint_every out"
            ) from None

    def __repr__(self) -> str:
        return f"Checkpoints({str(self.folder)!r}, keep={self.keep})"

    def files(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every checkpoint in the folder, oldest first."""
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``state`` (plus the config hash) as the checkpoint of ``step``, atomically; then delete all but
        the ``keep`` newest. Returns the file's path."""
        path = self.folder / f"step-{step:09d}.pt"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({**state, "config_hash": self.config_hash}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for _, old in self.files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load(self, path: Path) -> dict[str, Any]:
        """Read one checkpoint file (``weights_only=True``) and check its config hash.

        Raises:
            CheckpointError: the file cannot be read (truncated, corrupted) or holds another config's run.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {type(err).__name__}: {err}") from None
        if not isinstance(state, dict) or "step" not in state:
            raise CheckpointError(f"checkpoint {str(path)!r} is not a reglab checkpoint (no 'step')")
        theirs = state.get("config_hash")
        if self.config_hash is not None and theirs != self.config_hash:
            raise CheckpointMismatchError(
                f"checkpoint {str(path)!r} belongs to config {theirs}, not to this run's config {self.config_hash}; "
                "resume with the config it was written for, or delete the folder to start over"
            )
        return state

    def latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that reads, or None when there is none. A newer one that does not read (a
        damaged file) is skipped with a warning naming it; one of another config raises.

        Raises:
            CheckpointError: a checkpoint belongs to another config, or every checkpoint is damaged.
        """
        files = self.files()
        problems = []
        for _, path in reversed(files):
            try:
                state = self.load(path)
            except CheckpointMismatchError:
                raise
            except CheckpointError as err:
                problems.append(str(err))
                continue
            if problems:
                warnings.warn(
                    f"{'; '.join(problems)}; resuming from the checkpoint before it, {path.name}", stacklevel=2
                )
            return state
        if problems:
            raise CheckpointError(f"no checkpoint in {str(self.folder)!r} can be read: {'; '.join(problems)}")
        return None
