"""Input erasing: Cutout (a fixed-size square or segment zeroed) and Random Erasing (a random rectangle refilled).

Both are batch augmentations ``(inputs, targets) -> (inputs, targets)`` that
leave the targets untouched and draw their own region for every example.

Randomness: every random number is drawn from ``generator`` when one is given
and from torch's global generator otherwise (the :class:`~reglab.train.Trainer`
seeds it with ``seed``), so the same seed gives the same regions. The positions
and sizes are drawn on the CPU (on the generator's device when a generator is
given) in float64, a fixed number of draws per call, so that a run does not
depend on the device; only the random fill values of :class:`RandomErasing`
are drawn on the inputs' device. The regions of the last call are kept as
attributes (``last_centers``, ``last_boxes``) for logging and tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from reglab.augment.draws import check_generator, randint_from_uniform, spatial_dims, uniform_draws
from reglab.augment.registry import REGISTRY
from reglab.core import ConfigError
from reglab.core.validation import check_choice, check_float, check_int


def _segment_mask(start: Tensor, end: Tensor, length: int) -> Tensor:
    """(n, length) bool mask of positions start[i] <= j < end[i]."""
    pos = torch.arange(length)
    return (pos >= start[:, None]) & (pos < end[:, None])


def _region_mask(starts: list[Tensor], ends: list[Tensor], spatial: tuple[int, ...]) -> Tensor:
    """(n, *spatial) bool mask of the boxes [starts, ends) (one or two spatial dimensions)."""
    masks = [_segment_mask(s, e, size) for s, e, size in zip(starts, ends, spatial)]
    if len(masks) == 1:
        return masks[0]
    return masks[0][:, :, None] & masks[1][:, None, :]


def _broadcast_mask(mask: Tensor, inputs: Tensor) -> Tensor:
    """A per-example spatial mask (n, *spatial) broadcast over the channel dimension when there is one."""
    if mask.ndim < inputs.ndim:
        mask = mask.unsqueeze(1)
    return mask.to(inputs.device)


# -- Cutout ----------------------------------------------------------------------------------------------


@REGISTRY.register("cutout")
class Cutout:
    """Cutout: zero a size x size square (or a length-size segment of a signal) at a random center, per example.

    For every example i a center c_i is drawn uniformly over all positions of
    the image, c_i[d] ~ U{0, ..., S_d - 1} for each spatial size S_d, and the
    region

        [c_i[d] - size // 2, c_i[d] - size // 2 + size)   in every spatial dimension d,

    clipped to the image, is set to 0 in all channels. Because the center may
    lie anywhere, near a border the patch lies partly outside the image and
    fewer than size^2 values are zeroed; the paper found allowing this
    important ("Improved Regularization of Convolutional Neural Networks with
    Cutout", DeVries & Taylor, 2017). Zero is the dataset mean of normalized
    inputs. The targets are returned unchanged.

    Checked against the authors' code (github.com/uoguelph-mlrg/Cutout,
    ``util/cutout.py``): center drawn with ``np.random.randint`` over the whole
    image, box clipped with ``np.clip``, mask applied to every channel. The
    revision checked (02f333a) clips ``[c - length, c + length)``, a side of
    2 * length; the version widely copied from it (docstring "length x length")
    uses ``[c - length // 2, c + length // 2)``, one pixel short for odd sizes.
    This class zeroes exactly ``size`` positions per dimension when the patch
    lies inside.

    Usual sizes: 16 on CIFAR-10 (32 x 32), 8 on CIFAR-100 and SVHN, i.e. a
    quarter to a half of the image side. One patch per image (the paper's
    ``n_holes = 1``), applied to every training image.

    Example:
        >>> x, y = Cutout(size=8)(torch.ones(4, 3, 32, 32), torch.arange(4))
        >>> x[0].eq(0).sum() <= 3 * 8 * 8

    Args:
        size: side of the square (length of the segment for 1-D signals), >= 1.
        generator: a ``torch.Generator`` to draw the centers from; None draws from
            torch's global generator.

    Raises:
        ConfigError: ``size`` is not an int >= 1, ``generator`` is not a Generator,
            or (at call time) the inputs are not floating point.
        ShapeError: the inputs are not (n, c, h, w), (n, L) or (n, c, L).
    """

    def __init__(self, size: int = 16, *, generator: torch.Generator | None = None):
        self.size = check_int("size", size, 1)
        self.generator = check_generator(generator)
        self.last_centers: Tensor | None = None

    def __call__(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        d = spatial_dims("cutout", inputs)
        n, spatial = inputs.shape[0], tuple(inputs.shape[-d:])
        u = uniform_draws((n, d), self.generator)
        centers = torch.stack([randint_from_uniform(s, u[:, k]) for k, s in enumerate(spatial)], dim=1)
        starts = [(centers[:, k] - self.size // 2).clamp(0, s) for k, s in enumerate(spatial)]
        ends = [(centers[:, k] - self.size // 2 + self.size).clamp(0, s) for k, s in enumerate(spatial)]
        mask = _region_mask(starts, ends, spatial)
        self.last_centers = centers
        return inputs.masked_fill(_broadcast_mask(mask, inputs), 0), targets

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


# -- Random Erasing --------------------------------------------------------------------------------------

_FILLS = ("normal", "uniform", "zero")


@REGISTRY.register("random_erasing")
class RandomErasing:
    """Random Erasing: with probability p, replace a random rectangle of each image by random values or zeros.

    For every image (H x W) independently: with probability ``p`` (else the
    image is left as it is), try up to ``max_attempts`` times

        S_e ~ U(sl, sh) * H * W,   r_e ~ U(r1, 1 / r1),
        h_e = round(sqrt(S_e * r_e)),   w_e = round(sqrt(S_e / r_e)),

    and take the first attempt with h_e <= H and w_e <= W; its top-left corner
    is uniform over the positions where the rectangle fits, and the rectangle
    is filled in every channel. If no attempt fits, the image is unchanged.
    The targets are returned unchanged.

    References: Zhong, Zheng, Kang, Li & Yang, "Random Erasing Data
    Augmentation" (AAAI 2020), Algorithm 1. The paper's algorithm draws the
    corner first and repeats without bound until the rectangle fits; this
    class follows the authors' code (github.com/zhunzhong07/Random-Erasing,
    ``utils/transforms.py``): size first, at most 100 attempts, corner uniform
    among the fitting positions, ``int(round(.))`` sizes (sizes of 0 erase
    nothing). Fills: the paper compares random values (RE-R, its best), the
    ImageNet mean (RE-M), 0 (RE-0) and 255; here ``"normal"`` draws each value
    from N(0, 1) (random values for standardized inputs, as torchvision's
    ``value="random"``), ``"uniform"`` from U[0, 1) (random values for inputs
    scaled to [0, 1]) and ``"zero"`` writes 0 (the mean of standardized inputs).

    Hyperparameters (paper defaults): p = 0.5, sl = 0.02, sh = 0.4, r1 = 0.3.

    Example:
        >>> x, y = RandomErasing(p=0.5)(torch.randn(8, 3, 32, 32), torch.arange(8))

    Args:
        p: probability of erasing an image, in [0, 1].
        sl: smallest erased area fraction, in [0, 1].
        sh: largest erased area fraction, in [sl, 1].
        r1: smallest aspect ratio h_e / w_e, in (0, 1]; the largest is 1 / r1.
        fill: ``"normal"``, ``"uniform"`` or ``"zero"``.
        max_attempts: size draws per image before giving up, >= 1.
        generator: a ``torch.Generator`` to draw from; None draws from torch's global generator.

    Raises:
        ConfigError: an argument out of range (``sh < sl`` names ``sh``), or (at call
            time) inputs that are not floating point.
        ShapeError: the inputs are not a batch of images (n, c, h, w).
    """

    def __init__(
        self,
        p: float = 0.5,
        sl: float = 0.02,
        sh: float = 0.4,
        r1: float = 0.3,
        fill: str = "normal",
        max_attempts: int = 100,
        *,
        generator: torch.Generator | None = None,
    ):
        self.p = check_float("p", p, 0.0, 1.0)
        self.sl = check_float("sl", sl, 0.0, 1.0)
        self.sh = check_float("sh", sh, 0.0, 1.0)
        if self.sh < self.sl:
            raise ConfigError(f"sh must be >= sl = {self.sl:g}, got {sh!r}")
        self.r1 = check_float("r1", r1, 0.0, 1.0, low_open=True)
        self.fill = check_choice("fill", fill, _FILLS)
        self.max_attempts = check_int("max_attempts", max_attempts, 1)
        self.generator = check_generator(generator)
        self.last_boxes: Tensor | None = None

    def __call__(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        spatial_dims("random_erasing", inputs, allow_1d=False)
        n, _, height, width = inputs.shape
        area = height * width
        u_apply = uniform_draws((n,), self.generator)
        u_size = uniform_draws((n, self.max_attempts, 2), self.generator)
        u_pos = uniform_draws((n, 2), self.generator)

        target_area = (self.sl + (self.sh - self.sl) * u_size[..., 0]) * area
        ratio = self.r1 + (1.0 / self.r1 - self.r1) * u_size[..., 1]
        h = torch.round(torch.sqrt(target_area * ratio)).long()
        w = torch.round(torch.sqrt(target_area / ratio)).long()
        fits = (h <= height) & (w <= width)
        first = fits.long().argmax(dim=1, keepdim=True)  # index of the first fitting attempt (0 if none)
        erase = (u_apply < self.p) & fits.any(dim=1)
        h = torch.where(erase, h.gather(1, first).squeeze(1), 0)
        w = torch.where(erase, w.gather(1, first).squeeze(1), 0)
        top = torch.where(erase, randint_from_uniform(height - h + 1, u_pos[:, 0]), 0)
        left = torch.where(erase, randint_from_uniform(width - w + 1, u_pos[:, 1]), 0)
        self.last_boxes = torch.stack([top, left, h, w], dim=1)

        mask = _broadcast_mask(_region_mask([top, left], [top + h, left + w], (height, width)), inputs)
        if self.fill == "zero":
            return inputs.masked_fill(mask, 0), targets
        draw = torch.randn if self.fill == "normal" else torch.rand
        if self.generator is None:
            values = draw(inputs.shape, dtype=inputs.dtype, device=inputs.device)
        else:
            values = draw(inputs.shape, dtype=inputs.dtype, device=self.generator.device, generator=self.generator)
        return torch.where(mask, values.to(inputs.device), inputs), targets

    def __repr__(self) -> str:
        return (
            f"RandomErasing(p={self.p:g}, sl={self.sl:g}, sh={self.sh:g}, r1={self.r1:g}, "
            f"fill={self.fill!r}, max_attempts={self.max_attempts})"
        )


__all__ = ["Cutout", "RandomErasing"]
