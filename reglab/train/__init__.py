"""Layer 4: ``train_step``, the ``Trainer`` and its callbacks."""

from reglab.core import Callback
from reglab.train.device import Precision, move_batch, resolve_device
from reglab.train.noisy_labels import CoTeaching, CoTeachingResult, LateStopping, co_teaching, forget_rate_at
from reglab.train.step import grad_norm, supports_grad_scaler, train_step, unpack_batch
from reglab.train.trainer import Row, Trainer, TrainResult

__all__ = [
    "Precision",
    "move_batch",
    "resolve_device",
    "supports_grad_scaler",
    "Callback",
    "CoTeaching",
    "CoTeachingResult",
    "LateStopping",
    "Row",
    "TrainResult",
    "Trainer",
    "co_teaching",
    "forget_rate_at",
    "grad_norm",
    "train_step",
    "unpack_batch",
]
