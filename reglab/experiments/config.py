"""The run configuration: a pydantic schema, loaded from YAML, checked before anything trains.

Every method entry has the same shape, ``{name: <registry name>, <constructor
kwargs>}``; a penalty's weight is the key ``weight``::

    task: {name: mnist1d, n_train: 4000}
    transforms: [{name: label_noise, rate: 0.4}]
    model: {name: mlp, width: 256}
    loss: {name: label_smoothing, smoothing: 0.1}
    penalties: [{name: l2, weight: 1.0e-4}]
    optimizer: {name: adam, lr: 1.0e-3}
    augment: [{name: gaussian_noise, std: 0.05}]
    train: {steps: 2000, batch_size: 128, eval_every: 200, seed: 0, device: auto, precision: "32", threads: 1,
            clip_grad_norm: 1.0, accumulate: 1, checkpoint_every: 500}
    probes: [{name: weight_norm, every: 100}]

Unknown keys and unknown method names raise :class:`~reglab.core.ConfigError`
naming the field path (``penalties[0].name``) and the closest valid names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reglab import augment, diagnostics, losses, optim, penalties, tasks
from reglab.core import ConfigError, Registry, ReglabError
from reglab.core.errors import closest


class Spec(BaseModel):
    """One method entry: its registry ``name`` plus constructor keyword arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def kwargs(self) -> dict[str, Any]:
        """The constructor keyword arguments (every key but ``name``)."""
        return dict(self.model_extra or {})


class TrainSpec(BaseModel):
    """How long and how to train (strict types: ``steps: true`` or ``seed: "1"`` are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    steps: int = Field(1000, ge=0)
    batch_size: Annotated[int, Field(ge=1)] | Literal["full"] = 128
    eval_every: int = Field(100, ge=1)
    log_every: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    #: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; checked against the machine at build
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    #: ``"32"``, ``bf16`` (autocast) or ``fp16`` (autocast + GradScaler; not on a CPU)
    precision: Literal["32", "bf16", "fp16"] = "32"
    #: DataLoader worker processes for streamed tasks (0: read in the training process)
    num_workers: int = Field(0, ge=0)
    #: torch's CPU threads while the run is built and trained (``torch.set_num_threads``); CPU results depend on
    #: it, so ``reglab run`` and every sweep backend use this count, never the machine's or the pool's
    threads: int = Field(1, ge=1)
    #: clip the total gradient norm to this before each optimizer step (None: no clipping)
    clip_grad_norm: float | None = Field(None, gt=0)
    #: micro-batches of ``batch_size`` per optimizer step (gradient accumulation)
    accumulate: int = Field(1, ge=1)
    #: write a checkpoint every this many steps, next to the store (None: none); not part of the config hash,
    #: since a resumed run is bitwise the uninterrupted one
    checkpoint_every: int | None = Field(None, ge=1)

    @field_validator("clip_grad_norm", mode="before")
    @classmethod
    def _clip_as_float(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: Any) -> Any:
        return str(value) if value == 32 and not isinstance(value, bool) else value  # YAML reads `precision: 32` as int


#: ``train`` keys added after stores existed; left out of the config hash at their defaults so old hashes hold.
_NEW_TRAIN_DEFAULTS = {
    "device": "auto",
    "precision": "32",
    "num_workers": 0,
    "threads": 1,
    "clip_grad_norm": None,
    "accumulate": 1,
}

#: ``train`` keys that do not change a run's numbers, never hashed.
_UNHASHED_TRAIN_KEYS = ("checkpoint_every",)


class RunConfig(BaseModel):
    """A whole run. ``model`` defaults to the task's default model, ``loss`` to
    ``cross_entropy`` (classification) or ``mse`` (regression)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = None
    task: Spec
    transforms: list[Spec] = []
    model: Spec | None = None
    loss: Spec | None = None
    penalties: list[Spec] = []
    optimizer: Spec = Spec(name="adam", lr=1e-3)
    augment: list[Spec] = []
    train: TrainSpec = TrainSpec()
    probes: list[Spec] = []
    schedule: Spec | None = None

    @property
    def run_name(self) -> str:
        """``name`` if given, else one made of the task, loss, penalties and optimizer."""
        if self.name:
            return self.name
        parts = [self.task.name, self.loss.name if self.loss else "default_loss"]
        parts += [p.name for p in self.penalties] + [self.optimizer.name]
        return "-".join(parts)

    def config_hash(self) -> str:
        """A stable hash of everything that determines the numbers (all but ``name``).

        Method entries are hashed with their defaults filled in and numbers as
        floats, so ``{name: sgd, lr: 0.1}`` and ``{name: sgd, lr: 0.1, momentum: 0}``
        are the same run.
        """
        return config_hash(_canonical(self))

    def group_hash(self) -> str:
        """:meth:`config_hash` with ``train.seed`` left out: runs that differ only in their seed share it
        (a report's group, a "method"); stored as the ``group_hash`` column of a store's runs."""
        data = _canonical(self)
        data["train"] = {k: v for k, v in data["train"].items() if k != "seed"}
        return config_hash(data)


def stored_group_hash(config: Mapping[str, Any]) -> str:
    """The group hash of a config as a store holds it: :meth:`RunConfig.group_hash` when it is a valid run config,
    else :func:`config_hash` of the mapping without ``name`` and ``train.seed`` (a store takes any dict)."""
    try:
        return parse_config(config).group_hash()
    except ReglabError:
        data = {k: v for k, v in config.items() if k != "name"} if isinstance(config, Mapping) else {}
        if isinstance(data.get("train"), Mapping):
            data["train"] = {k: v for k, v in data["train"].items() if k != "seed"}
        return config_hash(data)


#: Each config field that names methods: the family it names (as ``reglab list`` calls it) and its registry.
FIELD_FAMILIES: dict[str, tuple[str, Any]] = {
    "task": ("task", lambda: tasks.REGISTRY),
    "transforms": ("transform", lambda: tasks.TRANSFORMS),
    "model": ("model", lambda: tasks.MODELS),
    "loss": ("loss", lambda: losses.REGISTRY),
    "penalties": ("penalty", lambda: penalties.REGISTRY),
    "optimizer": ("optimizer", lambda: optim.REGISTRY),
    "augment": ("augmentation", lambda: augment.REGISTRY),
    "probes": ("probe", lambda: diagnostics.REGISTRY),
    "schedule": ("schedule", lambda: optim.SCHEDULES),
}


def family_registries() -> dict[str, Registry]:
    """``{family: registry}`` for every family a config can name (``penalty``, ``loss``, ``optimizer``, ...)."""
    return {family: registry() for family, registry in FIELD_FAMILIES.values()}


def method_entries(cfg: RunConfig) -> Iterator[tuple[str, str, Spec]]:
    """Every method entry of ``cfg`` as ``(field, path, spec)``, e.g. ``("penalties", "penalties[1]", spec)``, in
    the order of :data:`FIELD_FAMILIES`."""
    for key in FIELD_FAMILIES:
        value = getattr(cfg, key)
        if isinstance(value, Spec):
            yield key, key, value
        elif isinstance(value, list):
            yield from ((key, f"{key}[{i}]", spec) for i, spec in enumerate(value))


#: Constructor arguments a run provides itself: name -> (the run object it comes from, how). A factory of a
#: :data:`FILLED_FIELDS` entry whose signature takes one of these names gets the run's value unless its config entry
#: gives one (the config wins); such an argument may be left out of a config even when it has no default.
RUN_ARGUMENTS: dict[str, tuple[Literal["task", "model", "train"], Callable[[Any], Any]]] = {
    "num_examples": ("task", lambda task: len(task.train)),  # per-example state (ELR, PS-KD)
    "num_classes": ("task", attrgetter("num_classes")),
    "model": ("model", lambda model: model),  # the SAM family keeps BatchNorm statistics out of perturbed passes
    "total_steps": ("train", attrgetter("steps")),  # a schedule runs over the whole run
}

#: The config fields built after the task and the model, whose factories get :data:`RUN_ARGUMENTS`.
FILLED_FIELDS = ("loss", "penalties", "optimizer", "augment", "probes", "schedule")


def _numbers_as_floats(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_numbers_as_floats(v) for v in value]
    return str(value)


#: Arguments a method gained after stores were written, with their defaults: left out of the hash at the default,
#: so configs written before keep their hashes.
_NEW_ARGUMENTS: dict[tuple[str, str], dict[str, Any]] = {("optimizer", "gsam"): {"eta": 0.0}}


def _canonical(cfg: RunConfig) -> dict[str, Any]:
    """The config as hashed: no ``name``, every method entry with its defaults filled in, numbers as floats."""
    data = cfg.model_dump(mode="json", exclude={"name"})
    if data.get("schedule") is None:  # configs written before schedules existed keep their hashes
        data.pop("schedule", None)
    for key, default in _NEW_TRAIN_DEFAULTS.items():  # so do configs written before devices existed
        if key in data["train"] and data["train"][key] == default:
            data["train"].pop(key)
    for key in _UNHASHED_TRAIN_KEYS:
        data["train"].pop(key, None)

    def fill(registry: Registry, spec: dict[str, Any]) -> dict[str, Any]:
        filled = {**registry.defaults(spec["name"]), **spec}
        for argument, default in _NEW_ARGUMENTS.get((registry.family, spec["name"]), {}).items():
            if argument in filled and filled[argument] == default:
                filled.pop(argument)
        if registry is optim.REGISTRY and "base" in filled:  # a wrapper's base optimizer, filled the same way
            base = filled["base"]
            base = {"name": base} if isinstance(base, str) else base
            if isinstance(base, Mapping) and isinstance(base.get("name"), str) and base["name"] in registry:
                filled["base"] = fill(registry, dict(base))
        return filled

    for key, (_, registry) in FIELD_FAMILIES.items():
        value = data.get(key)
        if isinstance(value, dict):
            data[key] = fill(registry(), value)
        elif isinstance(value, list):
            data[key] = [fill(registry(), spec) for spec in value]
    return _numbers_as_floats(data)


def config_hash(data: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the canonical JSON of ``data``."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overrides`` into a copy of ``base``: nested dicts merge, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _schema_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema allows where ``loc`` points (method entries take any key: their registry checks them)."""
    if len(loc) == 1:
        return list(RunConfig.model_fields)
    if tuple(loc[:-1]) == ("train",):
        return list(TrainSpec.model_fields)
    return []


def _translate(err: ValidationError) -> ConfigError:
    lines = []
    for e in err.errors():
        path = _field_path(e["loc"])
        if e["type"] == "extra_forbidden":
            near = closest(str(e["loc"][-1]), _schema_keys(e["loc"]))
            hint = f"; did you mean {near[0]!r}?" if near else ""
            lines.append(f"{path}: unknown key{hint}")
        else:
            lines.append(f"{path}: {e['msg']} (got {e.get('input')!r})")
    return ConfigError("invalid config:\n  " + "\n  ".join(lines))


_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _check_numbers_are_numbers(value: Any, field: str) -> None:
    """Reject a number written as text, the usual YAML trap: ``lr: 1e-3`` loads as the string '1e-3'."""
    if isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        raise ConfigError(
            f"{field}: {value!r} is text, not a number (YAML reads exponents without a dot, like 1e-3, "
            "as strings); write it with a dot and a signed exponent, e.g. 1.0e-3"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers_are_numbers(item, f"{field}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers_are_numbers(item, f"{field}[{i}]")


def check_names(cfg: RunConfig) -> None:
    """Check every method name and its arguments against the registries (:data:`RUN_ARGUMENTS` may be left out
    of a :data:`FILLED_FIELDS` entry).

    Raises:
        UnknownNameError: a name is not registered (the message names the field and the closest names).
        ConfigError: an entry has an argument its method does not take, or lacks a required one.
    """
    for key, path, spec in method_entries(cfg):
        registry = FIELD_FAMILIES[key][1]()
        registry.entry(spec.name, field=f"{path}.name")
        for name, value in spec.kwargs.items():
            _check_numbers_are_numbers(value, f"{path}.{name}")
        provided = RUN_ARGUMENTS if key in FILLED_FIELDS else ()
        # every optimizer takes no_weight_decay: the runner turns it into param groups (reglab.optim.param_groups)
        kwargs = optim.split_no_weight_decay(spec.kwargs, path)[0] if key == "optimizer" else spec.kwargs
        registry.check_kwargs(spec.name, kwargs, field=path, complete=True, provided=provided)


def parse_config(data: Mapping[str, Any]) -> RunConfig:
    """Validate a config dict: schema first, then every name against its registry.

    Raises:
        ConfigError: with one line per problem, each naming its field path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of fields, got {type(data).__name__}")
    try:
        cfg = RunConfig.model_validate(dict(data))
    except ValidationError as err:
        raise _translate(err) from None
    check_names(cfg)
    _check_json(cfg)
    return cfg


def _json_error(value: Any, path: str) -> str | None:
    """The path of the first value in ``value`` that JSON cannot hold, or None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, Mapping):
        return next((e for k, v in value.items() if (e := _json_error(v, f"{path}.{k}"))), None)
    if isinstance(value, (list, tuple)):
        return next((e for i, v in enumerate(value) if (e := _json_error(v, f"{path}[{i}]"))), None)
    return f"{path} = {value!r} ({type(value).__name__})"


def _check_json(cfg: RunConfig) -> None:
    """Every method argument must be a plain JSON value: configs are hashed, stored and sent to workers as JSON."""
    for _, path, spec in method_entries(cfg):
        if bad := _json_error(spec.kwargs, path):
            raise ConfigError(
                f"{bad}: config values must be numbers, strings, booleans, lists or mappings (e.g. 0.1 rather "
                "than numpy.float32(0.1), 'float32' rather than torch.float32); objects such as modules cannot be "
                "given in a config"
            )


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path) -> RunConfig:
    """Load and validate a run config from a YAML file."""
    return parse_config(read_yaml(path))
