"""The probe base class: run a measurement every N steps, log its numbers, and say where the report shows them."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from reglab.core import Callback
from reglab.core.validation import check_int


def probe_loss(trainer: Any) -> Any:
    """The loss a probe measures with: the trainer's, or plain cross-entropy / MSE when that loss keeps
    per-example state (it needs dataset ``indices``, which a measurement on arbitrary examples cannot give)."""
    loss_fn = trainer.loss_fn
    if "indices" in getattr(loss_fn, "needs", ()):
        classify = getattr(trainer.task, "num_classes", None) is not None
        return torch.nn.functional.cross_entropy if classify else torch.nn.functional.mse_loss
    return loss_fn


@dataclass(frozen=True)
class ReportSection:
    """A section of the HTML report (:func:`reglab.experiments.write_report`) that shows probe metrics.

    Attributes:
        key: snake_case id; the page anchor is ``probe-<key>`` and the figure ``curve_probe_<key>.png``.
        title: the section's heading.
        description: what the section shows, in a sentence or two, with the paper it comes from.
        order: place on the page, lower first; sections of metrics that no probe declares follow them all.
    """

    key: str
    title: str
    description: str
    order: int


def _is_tensor_state(value: Any) -> bool:
    if value is None or torch.is_tensor(value):
        return True
    return isinstance(value, Mapping) and all(torch.is_tensor(v) for v in value.values())


class Probe(Callback, abc.ABC):
    """A callback that measures every ``every`` steps (and at the last step) and logs to split ``probe``.

    Subclasses implement :meth:`measure`, returning ``{metric name: value}``;
    each value is logged as ``(step, "probe", name, value)``.

    Each registered probe also says where the report shows its metrics, in two
    class attributes that :mod:`reglab.experiments.report` reads from the probe
    registry:

    - ``report_section``: a :class:`ReportSection`. Probes that measure the same
      thing share one object (the Hessian and the random-direction sharpness
      probes both use :data:`reglab.diagnostics.curvature.SHARPNESS_SECTION`).
    - ``labels``: ``{metric name: axes title}`` for every metric the probe can
      log (matplotlib mathtext allowed). A key ending in ``*`` covers names that
      depend on the model, such as one metric per parameter: it labels every
      name that starts with what precedes the ``*``, and ``{}`` in its title
      stands for the rest of the name (``"stable_rank/*": "stable rank of {}"``).
      An exact key wins over a pattern.

    A probe that declares neither (a user's own, say) works the same; the report
    groups its metrics by the prefix of their names and titles each by its name.

    Example:
        >>> class Steps(Probe):
        ...     report_section = ReportSection("steps", "Steps", "The optimizer step.", order=100)
        ...     labels = {"steps/count": "optimizer steps", "steps/lr/*": "learning rate of group {}"}
        ...     def measure(self, trainer):
        ...         return {"steps/count": trainer.step}
        >>> Steps.label("steps/count"), Steps.label("steps/lr/0"), Steps.label("loss")
        ('optimizer steps', 'learning rate of group 0', None)

    Args:
        every: measure every this many optimizer steps, >= 1.
    """

    report_section: ClassVar[ReportSection | None] = None
    labels: ClassVar[Mapping[str, str]] = {}

    def __init__(self, every: int = 100):
        self.every = check_int("every", every, 1)

    @classmethod
    def label(cls, name: str) -> str | None:
        """The axes title of metric ``name`` from :attr:`labels`, or None when this probe does not declare it."""
        if name in cls.labels:
            return cls.labels[name]
        for key, title in cls.labels.items():
            if key.endswith("*") and name.startswith(key[:-1]):
                return title.replace("{}", name[len(key) - 1 :])
        return None

    @abc.abstractmethod
    def measure(self, trainer: Any) -> dict[str, float]:
        """The numbers to log at this step."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this probe: its private attributes (``_name``) that hold tensors, mappings
        of tensors or None — the reference points a probe takes at its first measurement (the initial weights and
        kernel of ``ntk_change``, a fixed example subset). A probe whose state is something else overrides this
        and :meth:`load_state_dict`."""
        return {k: v for k, v in vars(self).items() if k.startswith("_") and _is_tensor_state(v)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a resumed run continues with the same reference points)."""
        for key, value in state.items():
            setattr(self, key, value)

    def _record(self, trainer: Any, step: int) -> None:
        for name, value in self.measure(trainer).items():
            trainer.log(step, "probe", name, float(value))

    def on_train_begin(self, trainer: Any) -> None:
        self._record(trainer, 0)

    def on_step_end(self, trainer: Any, step: int, info: dict[str, float]) -> None:
        if step % self.every == 0:
            self._record(trainer, step)

    def on_train_end(self, trainer: Any, result: Any) -> None:
        if trainer.step % self.every != 0:  # the last step, when it is not a multiple of every
            self._record(trainer, trainer.step)
