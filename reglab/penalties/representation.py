"""Penalties on the learned representation: class centers, neural collapse, spectrum, diversity.

The feature penalties here read the penultimate features ``ctx.features`` (what
``model.features(x)`` returns, flattened to ``(N, D)``) and, where they need
classes, take ``ctx.targets`` as integer class labels:

- :class:`CenterLoss` (``center_loss``): pull each feature to its class center,
  centers kept in a buffer and moved with their own rate (Wen et al., 2016).
- :class:`NCWithin` (``nc_within``) and :class:`NCBetween` (``nc_between``):
  within-class compactness and simplex-ETF separation of the class means
  (neural-collapse regularizers for long-tailed data, Liu et al., 2023).
- :class:`SingularValueUniformity` (``sv_uniformity``): push the singular values
  of the batch feature matrix toward uniform (MSBReg's singular value loss).

:class:`PairwiseOrthogonality` (``pairwise_orthogonality``) is a weight penalty:
it makes a group of parameter matrices (e.g. the LoRA factors of one layer)
mutually orthogonal, as PEGO's diversity loss does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reglab.core import ConfigError, MissingContextError, Penalty, ShapeError, StepContext
from reglab.core.validation import check_bool, check_choice, check_float, check_int
from reglab.penalties.registry import REGISTRY

# --------------------------------------------------------------------------- helpers


def _features(penalty: Penalty, ctx: StepContext) -> Tensor:
    """``ctx.features`` as an ``(N, D)`` matrix, or a MissingContextError/ShapeError naming the penalty."""
    h = ctx.features
    if h is None:
        raise MissingContextError(
            f"{penalty.name} needs ctx.features (the penultimate features); train with reglab.train.train_step "
            "and a model that has features(x) and head(h), or fill StepContext.features yourself"
        )
    if h.ndim < 2 or h.shape[0] < 1:
        raise ShapeError(f"{penalty.name} needs features of shape (N, D) (or (N, ...)), got {tuple(h.shape)}")
    return h.reshape(h.shape[0], -1)


def _labels(penalty: Penalty, ctx: StepContext, n: int, num_classes: int | None = None) -> Tensor:
    """``ctx.targets`` as int64 class labels of shape ``(N,)``, checked."""
    y = ctx.targets
    if y is None or y.ndim != 1 or y.shape[0] != n or y.dtype.is_floating_point or y.dtype == torch.bool:
        got = "None" if y is None else f"{tuple(y.shape)} {y.dtype}"
        raise ShapeError(
            f"{penalty.name} needs integer class labels of shape ({n},) in ctx.targets, got {got}; "
            "soft or mixed targets (mixup, label smoothing as targets) cannot name a class"
        )
    y = y.long()
    if num_classes is not None and n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ConfigError(
            f"{penalty.name}: class labels must be in [0, {num_classes}) (num_classes={num_classes}), "
            f"got labels in [{int(y.min())}, {int(y.max())}]"
        )
    return y


def _class_means(h: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(classes present, their means (K', D), inverse index of each row into them)``."""
    classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    sums = torch.zeros(classes.shape[0], h.shape[1], dtype=h.dtype, device=h.device).index_add(0, inverse, h)
    return classes, sums / counts.unsqueeze(1).to(h.dtype), inverse


def _zero(like: Tensor) -> Tensor:
    # a zero that stays connected to the graph, so that backward() through a sum still works
    return like.sum() * 0.0


# --------------------------------------------------------------------------- center loss


@REGISTRY.register("center_loss")
class CenterLoss(Penalty):
    """Center loss: (1/2) mean_i ||h_i - c_{y_i}||^2, class centers moved by their own rate alpha.

    .. math::
        L_C = \\frac{1}{2m} \\sum_{i=1}^m \\lVert h_i - c_{y_i} \\rVert^2, \\qquad
        \\Delta c_j = \\frac{\\sum_i [y_i = j] (c_j - h_i)}{1 + \\sum_i [y_i = j]}, \\qquad
        c_j \\leftarrow c_j - \\alpha \\, \\Delta c_j

    with m the batch size. The centers are not trained by the optimizer: they
    live in the buffer ``centers`` (``num_classes x feature_dim``, zeros at the
    start) and, after the value is computed on the current centers, each center
    of a class present in the batch moves toward the mean of its features by the
    paper's rule above (classes absent from the batch keep their center). The
    update happens only in training mode, i.e. when both this penalty and
    ``ctx.model`` are in ``train()`` mode, so evaluating the penalty on a model
    in ``eval()`` mode leaves the centers alone. Every training-mode call
    moves the centers once: an optimizer that evaluates the closure twice per
    step (the SAM family) moves them twice.

    "A Discriminative Feature Learning Approach for Deep Face Recognition"
    (Wen, Zhang, Li, Qiao, 2016), eqs. (2)-(4). The paper writes the loss as a
    sum over the mini-batch; the authors' Caffe layer (``center_loss_layer``)
    divides it by the batch size, which is ``reduction="mean"`` (the default,
    checked against that layer, together with the 1/(1 + n_j) center step);
    ``reduction="sum"`` gives the paper's sum. Used as a continual-learning
    regularizer in "Center Loss Regularization for Continual Learning"
    (2021). Usual ranges: weight (lambda) 1e-3 to 0.1 (the paper uses
    0.003 beside softmax CE), alpha 0.1 to 0.9 (the paper uses 0.5).

    Example:
        >>> penalty = CenterLoss(0.01, num_classes=10, alpha=0.5)   # feature_dim taken at the first call

    Args:
        weight: lambda, >= 0.
        num_classes: number of classes K (labels are in [0, K)).
        feature_dim: D, the flattened feature size; None takes it from the first
            batch (a fresh instance still loads a saved ``state_dict``).
        alpha: the centers' rate, in [0, 1].
        reduction: "mean" (over the batch, as the reference code) or "sum" (as the paper's formula).

    Raises:
        ConfigError: a bad argument, or labels outside [0, num_classes).
        MissingContextError: ``ctx.features`` is None.
        ShapeError: targets are not integer labels, or the feature size differs from ``feature_dim``.
    """

    needs = frozenset({"features"})

    def __init__(
        self,
        weight: float,
        *,
        num_classes: int,
        feature_dim: int | None = None,
        alpha: float = 0.5,
        reduction: str = "mean",
        name: str | None = None,
    ):
        super().__init__(weight, name=name)
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.feature_dim = None if feature_dim is None else check_int("feature_dim", feature_dim, minimum=1)
        self.alpha = check_float("alpha", alpha, 0.0, 1.0)
        self.reduction = check_choice("reduction", reduction, ("mean", "sum"))
        centers = None if self.feature_dim is None else torch.zeros(self.num_classes, self.feature_dim)
        self.register_buffer("centers", centers)

    def compute(self, ctx: StepContext) -> Tensor:
        h = _features(self, ctx)
        y = _labels(self, ctx, h.shape[0], self.num_classes)
        if self.centers is None:
            self.feature_dim = h.shape[1]
            self.centers = torch.zeros(self.num_classes, h.shape[1], dtype=h.dtype, device=h.device)
        if h.shape[1] != self.centers.shape[1]:
            raise ShapeError(
                f"{self.name}: features have {h.shape[1]} dimensions but the centers have "
                f"{self.centers.shape[1]} (feature_dim); build a new CenterLoss for this model"
            )
        if self.centers.dtype != h.dtype or self.centers.device != h.device:
            self.centers = self.centers.to(device=h.device, dtype=h.dtype)
        diff = h - self.centers[y]  # indexing copies: the later in-place update does not touch the graph
        total = diff.pow(2).sum()
        value = 0.5 * (total / h.shape[0] if self.reduction == "mean" else total)
        if self.training and ctx.model.training:
            self._update_centers(h.detach(), y)
        return value

    @torch.no_grad()
    def _update_centers(self, h: Tensor, y: Tensor) -> None:
        """c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - h_i) / (1 + n_j)."""
        counts = torch.bincount(y, minlength=self.num_classes).to(h.dtype)
        pull = torch.zeros_like(self.centers).index_add_(0, y, self.centers[y] - h)
        self.centers.sub_(self.alpha * pull / (1.0 + counts).unsqueeze(1))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a fresh instance with feature_dim=None has no centers yet: create them so that loading round-trips
        saved = state_dict.get(prefix + "centers")
        if saved is not None and self.centers is None:
            self.centers = torch.empty_like(saved)
            self.feature_dim = saved.shape[1]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, num_classes={self.num_classes}, alpha={self.alpha:g}"


# --------------------------------------------------------------------------- neural collapse


@REGISTRY.register("nc_within")
class NCWithin(Penalty):
    """Within-class variability of the batch features (neural-collapse NC1 regularizer).

    With batch class means mu_k and the mean of the class means mu_G:

    - ``form="compactness"`` (default):  mean_i ||h_i - mu_{y_i}||^2, i.e. tr(Sigma_W);
    - ``form="ratio"``:  tr(Sigma_W) / tr(Sigma_B), with
      tr(Sigma_B) = mean_k ||mu_k - mu_G||^2 over the classes present.

    Both are 0 exactly when every feature equals its class mean (variability
    collapse). The compactness form is the within-class regularizer of
    "Inducing Neural Collapse in Deep Long-tailed Learning" (Liu, Zhang, Hu,
    Cao, Pan, Yao, 2023), sum_i ||h_i - mu_{y_i}||^2, here divided by the batch
    size so the weight does not scale with it; it can also be lowered by
    shrinking all features,
    which cross-entropy resists. The ratio form is the scale- and
    translation-invariant NC1-style measure (Papyan, Han, Donoho, "Prevalence
    of neural collapse during the terminal phase of deep learning training",
    2020, use tr(Sigma_W Sigma_B^+)/K). mu_G is the unweighted mean of the class
    means (not of all features), so that head classes do not set the center
    on imbalanced data. Batches with fewer than two classes give 0 for the ratio form.
    Usual weights: 1e-3 to 1 (compactness, depends on the feature scale), 0.01 to 1 (ratio).

    The form is not checked against the paper's text or code (see
    ``docs/provenance.md``).

    Example:
        >>> penalty = NCWithin(0.1, form="ratio")

    Args:
        weight: lambda_w, >= 0.
        form: "compactness" or "ratio".

    Raises:
        ConfigError: a bad argument.
        MissingContextError: ``ctx.features`` is None.
        ShapeError: targets are not integer class labels.
    """

    needs = frozenset({"features"})

    def __init__(self, weight: float, *, form: str = "compactness", name: str | None = None):
        super().__init__(weight, name=name)
        self.form = check_choice("form", form, ("compactness", "ratio"))

    def compute(self, ctx: StepContext) -> Tensor:
        h = _features(self, ctx)
        y = _labels(self, ctx, h.shape[0])
        _, means, inverse = _class_means(h, y)
        within = (h - means[inverse]).pow(2).sum(dim=1).mean()
        if self.form == "compactness":
            return within
        if means.shape[0] < 2:
            return _zero(h)
        between = (means - means.mean(dim=0)).pow(2).sum(dim=1).mean()
        return within / between


@REGISTRY.register("nc_between")
class NCBetween(Penalty):
    """Simplex-ETF separation of the batch class means: mean over pairs (cos(m_k, m_l) + 1/(K'-1))^2.

    .. math::
        m_k = \\mu_k - \\frac{1}{K'} \\sum_{l} \\mu_l, \\qquad
        R = \\frac{2}{K'(K'-1)} \\sum_{k < l} \\Big(\\cos(m_k, m_l) + \\frac{1}{K'-1}\\Big)^2

    over the K' classes present in the batch, mu_k their feature means. In a
    simplex equiangular tight frame every pair of centered class means has
    cosine -1/(K-1) (neural collapse NC2); any subset of K' vertices of a
    simplex ETF is itself a simplex ETF about its own mean, with cosine
    -1/(K'-1), so R is 0 on exactly collapsed features whichever classes a
    batch holds. R is invariant to translating, rotating and scaling the
    features; it constrains angles only, not the equal norms of the ETF. With
    K' = 2 the two centered means are always opposite and R = 0; batches with
    fewer than two classes give 0.

    The between-class regularizer of "Inducing Neural Collapse in Deep
    Long-tailed Learning" (Liu, Zhang, Hu, Cao, Pan, Yao, 2023): class-mean
    cosines pushed to -1/(K-1); the squared-deviation loss and the centering on
    the mean of the class means are ours. The form is not checked against the
    paper's text or code (see ``docs/provenance.md``). Usual weights: 0.01 to 1.

    Example:
        >>> penalty = NCWithin(0.1) + NCBetween(0.1)

    Args:
        weight: lambda_b, >= 0.
        eps: lower bound on the norms divided by (a class mean at the center has no direction), > 0.

    Raises:
        ConfigError: a bad argument.
        MissingContextError: ``ctx.features`` is None.
        ShapeError: targets are not integer class labels.
    """

    needs = frozenset({"features"})

    def __init__(self, weight: float, *, eps: float = 1e-12, name: str | None = None):
        super().__init__(weight, name=name)
        self.eps = check_float("eps", eps, 0.0, low_open=True)

    def compute(self, ctx: StepContext) -> Tensor:
        h = _features(self, ctx)
        y = _labels(self, ctx, h.shape[0])
        _, means, _ = _class_means(h, y)
        k = means.shape[0]
        if k < 2:
            return _zero(h)
        centered = means - means.mean(dim=0)
        unit = centered / centered.norm(dim=1, keepdim=True).clamp_min(self.eps)
        cos = unit @ unit.T
        rows, cols = torch.triu_indices(k, k, offset=1, device=h.device)
        return (cos[rows, cols] + 1.0 / (k - 1)).pow(2).mean()


# --------------------------------------------------------------------------- spectrum


@REGISTRY.register("sv_uniformity")
class SingularValueUniformity(Penalty):
    """Non-uniformity of the singular values of the batch feature matrix (MSBReg's singular value loss).

    Z is the ``(N, D)`` feature matrix with each row scaled to unit norm
    (``normalize=True``), s_1..s_r its r = min(N, D) singular values, and
    p_k = s_k / sum_l s_l:

    - ``form="variance"`` (default):  Var_k(s_k / mean(s)) = r * sum_k p_k^2 - 1;
    - ``form="kl"``:  KL(uniform || q) = -log r - (1/r) sum_k log q_k, with the
      smoothed q_k = (s_k + eps) / sum_l (s_l + eps) (finite when a singular value is 0).

    Both are >= 0 and 0 exactly when all singular values are equal (the
    embeddings spread evenly over r orthogonal directions); both are invariant
    to the scale of Z (the kl form up to eps). Used against dimensional collapse of embeddings.

    "An Embedding-Dynamic Approach to Self-supervised Learning" (Moon, Buracas,
    Park, Kim, Canny, 2022): its singular value loss "pushes the particle
    system toward spatially homogeneous density". The paper's exact form is
    unknown here: the two forms above (a variance, and a KL form built on
    -sum log s_k) are candidates with that property (see
    ``docs/provenance.md``). Usual weights: 0.01 to 1.

    Example:
        >>> penalty = SingularValueUniformity(0.1, form="kl")

    Args:
        weight: lambda_s, >= 0.
        form: "variance" or "kl".
        normalize: scale each row of Z to unit norm first (as in MSBReg).
        eps: added to each s_k in ``form="kl"``; lower bound on the row norms divided by, > 0.

    Raises:
        ConfigError: a bad argument.
        MissingContextError: ``ctx.features`` is None.
    """

    needs = frozenset({"features"})

    def __init__(
        self,
        weight: float,
        *,
        form: str = "variance",
        normalize: bool = True,
        eps: float = 1e-8,
        name: str | None = None,
    ):
        super().__init__(weight, name=name or "sv_uniformity")  # the registry name, not singular_value_uniformity
        self.form = check_choice("form", form, ("variance", "kl"))
        check_bool("normalize", normalize)
        self.normalize = normalize
        self.eps = check_float("eps", eps, 0.0, low_open=True)

    def compute(self, ctx: StepContext) -> Tensor:
        z = _features(self, ctx)
        if self.normalize:
            z = z / z.norm(dim=1, keepdim=True).clamp_min(self.eps)
        s = torch.linalg.svdvals(z)
        r = s.shape[0]
        if r < 2:
            return _zero(z)
        if self.form == "variance":
            p = s / s.sum()
            return r * p.pow(2).sum() - 1.0
        q = (s + self.eps) / (s + self.eps).sum()  # smoothed, still a distribution: KL >= 0, 0 iff uniform
        return -torch.log(q).mean() - math.log(r)


# --------------------------------------------------------------------------- weight diversity


@REGISTRY.register("pairwise_orthogonality")
class PairwiseOrthogonality(Penalty):
    """Mutual orthogonality of a group of weight matrices: sum_{i<j} ||W_i W_j^T||_F (PEGO's diversity loss).

    .. math:: R = \\sum_{\\text{groups}} \\sum_{i<j} \\lVert W_i W_j^\\top \\rVert_F^{q}, \\quad q \\in \\{1, 2\\}

    The matrices are the trainable parameters whose names match ``pattern``
    (``re.search``), each flattened to ``(shape[0], -1)``. With
    ``side="rows"`` (default) W_i W_j^T compares rows: for LoRA down-projections
    A_i (``r x d_in``, torch's ``(out, in)`` layout) it is 0 when the adapters
    read orthogonal input subspaces; ``side="columns"`` uses W_i^T W_j (for the
    up-projections B_i, ``d_out x r``). If the regex has a named group
    ``group``, matches with the same captured text form one group and only
    pairs inside a group are penalized (one group per layer); otherwise all
    matches form one group. ``squared=False`` (default) is the Frobenius norm
    itself, ``squared=True`` its square (smooth at 0).

    "Learn to Preserve and Diversify: Parameter-Efficient Group with
    Orthogonal Regularization for Domain Generalization" (PEGO, Hu et al.,
    ECCV 2024). The squared form sum_{i != j} ||A_i A_j^T||_F^2 is
    ``squared=True`` (times 1/2); public copies of PEGO's loss code
    (``ParameterOrthogonalityLoss`` over ``lora{i}_A`` in ``LoRAInjectedLinear``
    layers) sum the unsquared ``torch.norm(A_i @ A_j.T, "fro")`` over i < j per
    layer, which is our default. The preserve term (A_i against the frozen W_0)
    is not included. Usual weights: 1e-4 to 1e-1.

    Example:
        >>> # one group per layer: "blocks.3.attn.qkv.lora0_A.weight", "...lora1_A.weight", ...
        >>> penalty = PairwiseOrthogonality(1e-2, pattern=r"(?P<group>.*)\\.lora\\d+_A\\.weight$")

    Args:
        weight: lambda_div, >= 0.
        pattern: a regex over parameter names, or a list of them (matches of different regexes are never paired).
        side: "rows" (W_i W_j^T) or "columns" (W_i^T W_j).
        squared: use ||.||_F^2 instead of ||.||_F.

    Raises:
        ConfigError: a bad argument or regex; fewer than two parameters match in every group.
        ShapeError: two matrices of a group cannot be multiplied (different widths).
    """

    def __init__(
        self,
        weight: float,
        *,
        pattern: str | Sequence[str],
        side: str = "rows",
        squared: bool = False,
        name: str | None = None,
    ):
        super().__init__(weight, name=name)
        patterns = [pattern] if isinstance(pattern, str) else list(pattern) if isinstance(pattern, Sequence) else None
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ConfigError(f"pattern must be a non-empty regex string or a list of them, got {pattern!r}")
        self.patterns = []
        for p in patterns:
            try:
                self.patterns.append(re.compile(p))
            except re.error as err:
                raise ConfigError(f"pattern {p!r} is not a valid regex: {err}") from None
        self.side = check_choice("side", side, ("rows", "columns"))
        check_bool("squared", squared)
        self.squared = squared

    def groups(self, model: nn.Module) -> dict[str, list[tuple[str, Tensor]]]:
        """The matched trainable parameters by group: ``{group: [(name, parameter), ...]}``."""
        out: dict[str, list[tuple[str, Tensor]]] = {}
        for pname, p in model.named_parameters():
            if not p.requires_grad:
                continue
            for rx in self.patterns:
                m = rx.search(pname)
                if m:
                    key = m.groupdict().get("group") or ""
                    out.setdefault(f"{rx.pattern}:{key}" if len(self.patterns) > 1 else key, []).append((pname, p))
                    break
        return out

    def compute(self, ctx: StepContext) -> Tensor:
        groups = self.groups(ctx.model)
        if not any(len(members) >= 2 for members in groups.values()):
            names = [n for n, p in ctx.model.named_parameters() if p.requires_grad]
            matched = [n for members in groups.values() for n, _ in members]
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ConfigError(
                f"{self.name}: pattern {[p.pattern for p in self.patterns]} must match at least two trainable "
                f"parameters in one group, matched {matched or 'none'}; parameter names are: {shown}"
            )
        total = None
        for members in groups.values():
            mats = [(n, p.reshape(p.shape[0], -1) if p.ndim != 1 else p.reshape(1, -1)) for n, p in members]
            if self.side == "columns":
                mats = [(n, m.T) for n, m in mats]
            for i in range(len(mats)):
                for j in range(i + 1, len(mats)):
                    (ni, a), (nj, b) = mats[i], mats[j]
                    if a.shape[1] != b.shape[1]:
                        raise ShapeError(
                            f"{self.name}: {ni} {tuple(a.shape)} and {nj} {tuple(b.shape)} have different "
                            f"{'widths' if self.side == 'rows' else 'heights'}, so W_i W_j^T is undefined; "
                            "use a named group (?P<group>...) so that only matrices of one layer are paired"
                        )
                    prod = a @ b.T
                    term = prod.pow(2).sum() if self.squared else torch.linalg.vector_norm(prod)
                    total = term if total is None else total + term
        return total
