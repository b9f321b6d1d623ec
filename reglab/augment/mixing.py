"""Mixing augmentations: Mixup (convex combinations of pairs) and CutMix (a box pasted from a partner).

Both pair every example i with example perm[i] of the same batch, where perm
is a uniformly random permutation of the whole batch (so odd batch sizes are
fine, and an example may be paired with itself), and return *soft targets*:
probabilities of shape (n, K), which :class:`reglab.losses.CrossEntropy` (and
every loss with ``soft_targets = True``) accepts. The targets may come in as
int class indices (n,), turned into one-hot vectors with ``num_classes``, or
already as probabilities (n, K), e.g. after label smoothing or another mixing
step. When the augmentation is skipped (probability ``1 - p``) the targets are
still returned as probabilities, so a batch always has the same format.

Randomness: from ``generator`` when one is given, else from torch's global
generator (the :class:`~reglab.train.Trainer` seeds it); a fixed number of
float64 draws on the CPU per call (on the generator's device when given).
lambda ~ Beta(alpha, alpha) is drawn by inversion, ``scipy.special.betaincinv``
of a uniform draw, so that it can come from a ``torch.Generator``. The last
call's ``last_lam``, ``last_perm`` and ``last_applied`` (and CutMix's
``last_box``) are kept for logging and tests.
"""

from __future__ import annotations

import math

import torch
from scipy.special import betaincinv
from torch import Tensor

from reglab.augment.draws import check_generator, randint_from_uniform, spatial_dims, uniform_draws
from reglab.augment.registry import REGISTRY
from reglab.core import ConfigError, ShapeError
from reglab.core.validation import check_float, check_int


def soft_targets(targets: Tensor, n: int, num_classes: int | None, dtype: torch.dtype, owner: str) -> Tensor:
    """``targets`` as (n, K) probabilities in ``dtype``: one-hot of class indices, or the probabilities as given.

    Raises:
        ConfigError: class indices without ``num_classes``.
        ShapeError: targets that are neither (n,) integer class indices in [0, K) nor (n, K) floating
            probabilities with K == num_classes (when given).
    """
    if not isinstance(targets, Tensor):
        raise ShapeError(f"{owner} needs a tensor of targets, got {type(targets).__name__}")
    if targets.is_floating_point() and targets.ndim == 2 and targets.shape[0] == n:
        if num_classes is not None and targets.shape[1] != num_classes:
            raise ShapeError(
                f"{owner}: probability targets have {targets.shape[1]} classes but num_classes={num_classes}"
            )
        return targets.to(dtype)
    integer = not targets.is_floating_point() and not targets.is_complex() and targets.dtype != torch.bool
    if not (integer and targets.ndim == 1 and targets.shape[0] == n):
        raise ShapeError(
            f"{owner} needs int class indices of shape ({n},) or probabilities of shape ({n}, num_classes), "
            f"got targets of shape {tuple(targets.shape)} and dtype {targets.dtype} "
            "(regression targets cannot be mixed)"
        )
    if num_classes is None:
        raise ConfigError(
            f"{owner} needs num_classes to one-hot encode class-index targets; "
            "set num_classes to the task's class count"
        )
    if n and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ShapeError(
            f"{owner}: class indices must be in [0, {num_classes}), got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    return torch.nn.functional.one_hot(targets.long(), num_classes).to(dtype)


def _randperm(n: int, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randperm(n)
    return torch.randperm(n, generator=generator, device=generator.device).cpu()


class _Mixing:
    """Shared arguments, validation and draws of Mixup and CutMix."""

    def __init__(
        self,
        alpha: float,
        num_classes: int | None,
        lam: float | None,
        p: float,
        generator: torch.Generator | None,
    ):
        self.alpha = check_float("alpha", alpha, 0.0, low_open=True)
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, 2)
        self.lam = None if lam is None else check_float("lam", lam, 0.0, 1.0)
        self.p = check_float("p", p, 0.0, 1.0)
        self.generator = check_generator(generator)
        self.last_lam: float | None = None
        self.last_perm: Tensor | None = None
        self.last_applied: bool | None = None

    def _draw(self, n: int, extra: int) -> tuple[bool, float, Tensor, Tensor]:
        """(apply?, lambda, perm, ``extra`` more uniforms), always the same number of draws."""
        u = uniform_draws((2 + extra,), self.generator)
        perm = _randperm(n, self.generator)
        lam = self.lam if self.lam is not None else float(betaincinv(self.alpha, self.alpha, u[1].item()))
        return bool(u[0].item() < self.p), lam, perm, u[2:]

    def _params(self) -> str:
        fixed = "" if self.lam is None else f", lam={self.lam:g}"
        return f"alpha={self.alpha:g}, num_classes={self.num_classes}{fixed}, p={self.p:g}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params()})"


@REGISTRY.register("mixup")
class Mixup(_Mixing):
    """Mixup: train on convex combinations of pairs of examples and of their one-hot labels.

    With lambda ~ Beta(alpha, alpha) drawn once per batch and perm a random
    permutation of the batch,

        x~ = lambda * x + (1 - lambda) * x[perm]
        y~ = lambda * onehot(y) + (1 - lambda) * onehot(y[perm])

    and the loss is the cross-entropy with the soft targets y~, which for
    cross-entropy equals the reference code's
    lambda * CE(f(x~), y) + (1 - lambda) * CE(f(x~), y[perm]).

    References: Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical
    Risk Minimization" (ICLR 2018). Checked against the authors' code
    (github.com/facebookresearch/mixup-cifar10, ``train.py`` ``mixup_data``):
    one lambda per batch from ``np.random.beta(alpha, alpha)``, partner
    ``x[torch.randperm(batch_size)]``, the loss mixed with the same lambda.

    Hyperparameters: alpha = 1 on CIFAR-10/100 (the reference default), 0.1–0.4
    on ImageNet (larger alpha underfits); alpha -> 0 recovers ERM.

    Example:
        >>> mix = Mixup(alpha=0.2, num_classes=10)
        >>> x, q = mix(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        >>> loss = reglab.losses.CrossEntropy()(model(x), q)   # q has shape (8, 10)

    Args:
        alpha: Beta concentration, > 0.
        num_classes: K, >= 2; needed for class-index targets (probability targets carry K).
        lam: a fixed lambda in [0, 1] instead of drawing it (tests, ablations); 1 is the identity.
        p: probability of mixing a batch, in [0, 1] (1 in the paper).
        generator: a ``torch.Generator`` to draw from; None draws from torch's global generator.

    Returns (when called):
        ``(x~, y~)`` with x~ of the inputs' shape and dtype and y~ of shape (n, K) in the inputs' dtype.

    Raises:
        ConfigError: an argument out of range, class-index targets without ``num_classes``, or
            inputs that are not floating point.
        ShapeError: targets that are neither (n,) class indices nor (n, K) probabilities.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        lam: float | None = None,
        p: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(alpha, num_classes, lam, p, generator)

    def __call__(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
            got = inputs.dtype if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ConfigError(
                f"mixup needs floating-point inputs, got {got}; token inputs cannot be interpolated "
                "(remove mixup from `augment` for tasks such as modular_arithmetic)"
            )
        n = inputs.shape[0]
        q = soft_targets(targets, n, self.num_classes, inputs.dtype, "mixup")
        apply, lam, perm, _ = self._draw(n, 0)
        self.last_applied, self.last_perm = apply, perm
        if not apply:
            self.last_lam = 1.0
            return inputs, q
        self.last_lam = lam
        idx = perm.to(inputs.device)
        mixed = lam * inputs + (1.0 - lam) * inputs[idx]
        return mixed, lam * q + (1.0 - lam) * q[idx.to(q.device)]


@REGISTRY.register("cutmix")
class CutMix(_Mixing):
    """CutMix: paste a random box from a partner example and mix the labels by the pasted area.

    With lambda0 ~ Beta(alpha, alpha) drawn once per batch, a box of sides
    r_d = floor(S_d * (1 - lambda0) ** (1 / D)) (D = 2 for images, so
    r_h = floor(H sqrt(1 - lambda0)), r_w = floor(W sqrt(1 - lambda0)); D = 1 for
    signals) is centered at a uniform position c_d ~ U{0, ..., S_d - 1},
    clipped to the image, and the same box is copied from x[perm[i]] into x[i]
    for every i. The label weight is then set to the *exact* kept fraction,

        lambda = 1 - (pasted area) / (H * W),
        y~ = lambda * onehot(y) + (1 - lambda) * onehot(y[perm]).

    References: Yun, Han, Oh, Chun, Choe & Yoo, "CutMix: Regularization
    Strategy to Train Strong Classifiers with Localizable Features" (ICCV
    2019). Checked against the authors' code (github.com/clovaai/CutMix-PyTorch,
    ``train.py`` ``rand_bbox``): one lambda, one permutation and one box per
    batch, ``cut_w = int(W * sqrt(1 - lam))``, uniform center, box clipped to
    the image, lambda adjusted "to exactly match pixel ratio". Departures: the
    reference box is ``[c - cut // 2, c + cut // 2)`` (one short for odd
    ``cut``), here ``[c - cut // 2, c - cut // 2 + cut)``; 1-D signals (n, L) and
    (n, c, L) get a segment of length floor(L (1 - lambda0)).

    Hyperparameters: alpha = 1 (lambda0 uniform on [0, 1]) in the paper; the
    reference applies CutMix to a batch with probability 0.5 on CIFAR and 1.0
    on ImageNet (``p`` here).

    Example:
        >>> x, q = CutMix(alpha=1.0, num_classes=10)(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))

    Args:
        alpha: Beta concentration, > 0.
        num_classes: K, >= 2; needed for class-index targets (probability targets carry K).
        lam: a fixed lambda0 in [0, 1] instead of drawing it (the box area is 1 - lam0 before
            clipping and rounding; the returned weights use the exact area).
        p: probability of mixing a batch, in [0, 1].
        generator: a ``torch.Generator`` to draw from; None draws from torch's global generator.

    Raises:
        ConfigError: an argument out of range, class-index targets without ``num_classes``, or
            inputs that are not floating point.
        ShapeError: inputs that are not (n, c, h, w), (n, L) or (n, c, L); targets that are neither
            (n,) class indices nor (n, K) probabilities.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        num_classes: int | None = None,
        *,
        lam: float | None = None,
        p: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(alpha, num_classes, lam, p, generator)
        self.last_box: tuple[tuple[int, int], ...] | None = None

    def __call__(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        d = spatial_dims("cutmix", inputs)
        n, spatial = inputs.shape[0], tuple(inputs.shape[-d:])
        q = soft_targets(targets, n, self.num_classes, inputs.dtype, "cutmix")
        apply, lam0, perm, u = self._draw(n, d)
        self.last_applied, self.last_perm = apply, perm
        if not apply:
            self.last_lam, self.last_box = 1.0, None
            return inputs, q
        ratio = (1.0 - lam0) ** (1.0 / d)
        box = []
        for k, size in enumerate(spatial):
            cut = int(math.floor(size * ratio))
            center = int(randint_from_uniform(size, u[k]))
            start = min(max(center - cut // 2, 0), size)
            box.append((start, min(max(center - cut // 2 + cut, 0), size)))
        self.last_box = tuple(box)
        idx = perm.to(inputs.device)
        region = (..., *(slice(a, b) for a, b in box))
        mixed = inputs.clone()
        mixed[region] = inputs[idx][region]
        lam = 1.0 - math.prod(b - a for a, b in box) / math.prod(spatial)
        self.last_lam = lam
        return mixed, lam * q + (1.0 - lam) * q[idx.to(q.device)]


__all__ = ["CutMix", "Mixup", "soft_targets"]
