"""Give any classifier the ``features(x)`` / ``head(h)`` pair that reglab's penalties and probes read.

Reference models implement the pair themselves. A ResNet from torchvision, a
timm model or a user's own network gets it from :func:`split_model`, which
names the readout module (found automatically: the classifier timm declares,
else the last ``nn.Linear`` the model registers — ``fc`` of a ResNet,
``classifier.6`` of a VGG, ``heads.head`` of a ViT)::

    model = split_model(torchvision.models.resnet18(num_classes=10))   # head "fc"
    h = model.features(x)        # (n, 512): the input of fc
    logits = model.head(h)       # == model(x), bit for bit

``features(x)`` runs the wrapped model with the head module swapped for an
identity for the duration of the call, so the head is computed once per
forward pass and the model is left as it was. The model's output must be the
head's output (the usual classifier layout: pool, flatten, then the head).
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from reglab.core.errors import ConfigError


def _parent_and_name(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path) if parent_path else model
    except AttributeError:
        parent = None
    if parent is None or name not in parent._modules:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ConfigError(
            f"head: {type(model).__name__} has no submodule {path!r}; name the readout module, e.g. "
            f"{linears[-1]!r}" + (f" (its Linear modules: {', '.join(linears[-4:])})" if linears else "")
        )
    return parent, name


def find_head(model: nn.Module) -> str:
    """The name of ``model``'s readout module: timm's ``default_cfg["classifier"]``, else its last ``nn.Linear``.

    Raises:
        ConfigError: the model has no ``nn.Linear`` to take as the head.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    name = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(name, str):
        try:
            if isinstance(model.get_submodule(name), nn.Module):
                return name
        except AttributeError:
            pass
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"head: cannot find the readout of {type(model).__name__} (it has no nn.Linear); pass head= naming "
            "the module whose input is the penultimate representation"
        )
    return linears[-1]


class SplitModel(nn.Module):
    """A classifier with ``features(x)`` (the input of its head module) and ``head(h)``.

    Args:
        model: the classifier; its output must be the head module's output.
        head: the dotted name of the head module (``"fc"``, ``"classifier.6"``); None: :func:`find_head`.

    Attributes:
        model: the wrapped model (its parameters are this module's, named ``model.<name>``).
        head_name: the head module's name in ``model``.
        feature_dim: the head's ``in_features`` when it is an ``nn.Linear``, else None.

    Raises:
        ConfigError: ``head`` names no submodule, or none can be found.
    """

    def __init__(self, model: nn.Module, head: str | None = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.head_name = head if head is not None else find_head(model)
        _parent_and_name(model, self.head_name)  # checks the name
        module = self.head_module
        self.feature_dim = module.in_features if isinstance(module, nn.Linear) else None

    def _slot(self) -> tuple[dict, str]:
        parent, name = _parent_and_name(self.model, self.head_name)
        return parent._modules, name

    @property
    def head_module(self) -> nn.Module:
        """The head module itself."""
        modules, name = self._slot()
        return modules[name]

    def features(self, x: Tensor) -> Tensor:
        """The penultimate representation: the model's forward pass with the head replaced by an identity."""
        modules, name = self._slot()
        head = modules[name]
        modules[name] = nn.Identity()
        try:
            return self.model(x)
        finally:
            modules[name] = head

    def head(self, h: Tensor) -> Tensor:
        """The head module applied to features ``h``."""
        return self.head_module(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def extra_repr(self) -> str:
        return f"head={self.head_name!r}"


def split_model(model: nn.Module, head: str | None = None) -> nn.Module:
    """``model`` with ``features(x)`` and ``head(h)``: itself if it has both methods, else a :class:`SplitModel`.

    The returned module shares ``model``'s parameters (build optimizers from either).

    Raises:
        ConfigError: ``head`` names no submodule, or the head cannot be found.
    """
    if head is None and all(inspect.ismethod(getattr(model, m, None)) for m in ("features", "head")):
        return model  # a reference model, or one that already has the pair (VGG's ``features`` module does not count)
    return SplitModel(model, head)
