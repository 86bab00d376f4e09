"""The typed configuration of a run: defaults, YAML files, `--set` overrides and validation.

A configuration is a tree of dataclasses. Every field has a type and a default, and may have
allowed `choices` or a numeric range. Loading checks everything before any training starts and
reports the first problem as a `UserError` that names the key:

```python
config = load_config("experiment.yaml", overrides=["training.epochs=20", "model.size=student"])
config.training.epochs  # 20
dump_config(config)     # YAML text that reproduces the run exactly
```
"""

import dataclasses
import difflib
import hashlib
import math
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from app.errors import UserError

OPTIMIZER_PARAMETERS = {
    "sgd": {"momentum", "nesterov"},
    "adagrad": {"epsilon", "initial_accumulator_value"},
    "rmsprop": {"rho", "momentum", "epsilon", "centered"},
    "adadelta": {"rho", "epsilon"},
    "adam": {"beta_1", "beta_2", "epsilon", "amsgrad"},
    "adamw": {"beta_1", "beta_2", "epsilon", "amsgrad"},
    "radam": {"beta_1", "beta_2", "epsilon"},
}
# Keys that every optimizer takes.
COMMON_OPTIMIZER_KEYS = {"name", "weight_decay", "lookahead", "lookahead_sync_period",
                         "lookahead_step_size"}


# Keys that were renamed, with their new name: an old configuration gets a pointed message.
MOVED_KEYS = {
    "optimizer.learning_rate": "schedule.lr",
    "schedule.warmup_epochs": "schedule.warmup",
    "schedule.min_learning_rate": "schedule.min_lr",
    "schedule.decay_rate": "schedule.gamma",
}

# The keys of the schedule section that apply to each schedule (besides the common ones).
SCHEDULE_PARAMETERS = {
    "constant": set(),
    "step": {"step_size", "gamma"},
    "multistep": {"milestones", "gamma"},
    "exponential": {"gamma"},
    "cosine": {"t_max", "min_lr"},
    "cosine_restarts": {"t_0", "t_mult", "min_lr"},
    "cyclic": {"step_size", "step_size_down", "min_lr", "cyclic_mode", "gamma"},
    "one_cycle": {"pct_start", "anneal_strategy", "div_factor", "final_div_factor",
                  "three_phase"},
}
REQUIRED_SCHEDULE_PARAMETERS = {
    "step": "step_size", "multistep": "milestones", "cosine_restarts": "t_0", "cyclic": "step_size",
}
# The rules of `callbacks.suggest_learning_rate`, here so that configurations and the
# command line are checked before Keras starts.
LR_FINDER_RULES = ("valley", "steepest", "minimum")
TUNERS = ("random", "hyperband", "bayesian")
DISTRIBUTION_STRATEGIES = ("none", "mirrored", "tpu", "data-parallel")
# Cyclic and one-cycle schedules rise from a low rate by themselves.
WARMUP_SCHEDULES = ("constant", "step", "multistep", "exponential", "cosine", "cosine_restarts")


def option(default, *, choices=None, low=None, high=None, low_open=False, high_open=False,
           keywords=()):
    """A configuration field with its default and the values it accepts.

    Args:
        default: the value used when the configuration does not set the key.
        choices: the allowed values, or `None` for any value of the field's type.
        keywords: strings accepted besides values of the field's type (e.g. `"auto"`).
        low: the smallest allowed number (`None`: unbounded).
        high: the largest allowed number (`None`: unbounded).
        low_open: whether `low` itself is excluded.
        high_open: whether `high` itself is excluded.
    """
    metadata = {
        "choices": choices,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "keywords": tuple(keywords),
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from and how it is split.

    `source` is a bundled scikit-learn dataset name (`digits`, `iris`, `wine`,
    `breast_cancer`) or a path: a `.npz` file, a `.csv` file, or a folder of images with
    one subfolder per class. The split is drawn with `split_seed`, or `seed` when it is
    `null`: fixing it varies only the training seed (`distill` uses the teacher's split).
    """

    source: str = option("digits")
    label_column: str = option("label")
    x_key: str = option("x")
    y_key: str = option("y")
    image_size: Optional[list[int]] = option(None)
    color_mode: str = option("grayscale", choices=["grayscale", "rgb"])
    validation_fraction: float = option(0.15, low=0.0, high=1.0, low_open=True, high_open=True)
    test_fraction: float = option(0.15, low=0.0, high=1.0, low_open=True, high_open=True)
    split_seed: Optional[int] = option(None, low=0)
    normalize: bool = option(True)


@dataclasses.dataclass
class ModelConfig:
    """Which model to build. `width`, `depth` and `filters` override the size preset."""

    architecture: str = option("mlp", choices=["mlp", "cnn"])
    size: str = option("teacher", choices=["teacher", "student"])
    width: Optional[int] = option(None, low=1)
    depth: Optional[int] = option(None, low=1)
    filters: Optional[int] = option(None, low=1)
    activation: str = option(
        "relu", choices=["relu", "gelu", "silu", "elu", "selu", "tanh", "sigmoid", "leaky_relu"]
    )
    initializer: str = option(
        "he_normal",
        choices=["he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "lecun_normal"],
    )
    normalization: str = option("batch", choices=["batch", "layer", "none"])
    dropout: float = option(0.1, low=0.0, high=1.0, high_open=True)
    l1: float = option(0.0, low=0.0)
    l2: float = option(0.0, low=0.0)
    num_classes: Optional[int] = option(None, low=2)


@dataclasses.dataclass
class OptimizerConfig:
    """The optimizer. Unset (`null`) parameters take Keras's default for that optimizer.

    The learning rate is `schedule.lr`. `lookahead` wraps the optimizer in
    `callbacks.Lookahead` (every `lookahead_sync_period` updates, the slow weights move
    `lookahead_step_size` of the way to the fast ones).
    """

    name: str = option("adam", choices=sorted(OPTIMIZER_PARAMETERS))
    weight_decay: Optional[float] = option(None, low=0.0)
    momentum: Optional[float] = option(None, low=0.0, high=1.0, high_open=True)
    nesterov: Optional[bool] = option(None)
    beta_1: Optional[float] = option(None, low=0.0, high=1.0, high_open=True)
    beta_2: Optional[float] = option(None, low=0.0, high=1.0, high_open=True)
    epsilon: Optional[float] = option(None, low=0.0, low_open=True)
    rho: Optional[float] = option(None, low=0.0, high=1.0, high_open=True)
    amsgrad: Optional[bool] = option(None)
    centered: Optional[bool] = option(None)
    initial_accumulator_value: Optional[float] = option(None, low=0.0)
    lookahead: bool = option(False)
    lookahead_sync_period: int = option(5, low=1)
    lookahead_step_size: float = option(0.5, low=0.0, high=1.0, low_open=True)


@dataclasses.dataclass
class PlateauConfig:
    """Reduce the learning rate when `monitor` stops improving (`callbacks.ReduceLROnPlateau`).

    Works with every schedule: it then scales the schedule's output.
    """

    enabled: bool = option(False)
    monitor: str = option("val_loss", choices=["val_loss", "val_accuracy", "loss", "accuracy"])
    mode: str = option("auto", choices=["auto", "min", "max"])
    factor: float = option(0.1, low=0.0, high=1.0, low_open=True, high_open=True)
    patience: int = option(5, low=0)
    threshold: float = option(1e-4, low=0.0)
    threshold_mode: str = option("rel", choices=["rel", "abs"])
    cooldown: int = option(0, low=0)
    min_lr: float = option(0.0, low=0.0)


@dataclasses.dataclass
class ScheduleConfig:
    """The learning rate and how it changes over training.

    `lr` is the constant, initial or peak rate: a number, `null` (Keras's default for the
    optimizer) or `auto` (the LR finder's suggestion by `lr_rule`). Lengths (`warmup`, `step_size`,
    `milestones`, `t_max`, `t_0`, `step_size_down`) count `unit`s: `epochs` (fractions
    allowed) or optimizer `updates`. Schedule-specific keys left `null` take the defaults in
    the README; setting one that does not apply to `name` is an error.
    """

    name: str = option("constant", choices=list(SCHEDULE_PARAMETERS))
    lr: Optional[float] = option(None, low=0.0, low_open=True, keywords=["auto"])
    lr_rule: str = option("valley", choices=list(LR_FINDER_RULES))
    unit: str = option("epochs", choices=["epochs", "updates"])
    warmup: float = option(0.0, low=0.0)
    warmup_start_factor: float = option(0.0, low=0.0, high=1.0)
    gamma: Optional[float] = option(None, low=0.0, low_open=True)
    step_size: Optional[float] = option(None, low=0.0, low_open=True)
    step_size_down: Optional[float] = option(None, low=0.0, low_open=True)
    milestones: Optional[list[float]] = option(None, low=0.0)
    t_max: Optional[float] = option(None, low=0.0, low_open=True)
    t_0: Optional[float] = option(None, low=0.0, low_open=True)
    t_mult: Optional[int] = option(None, low=1)
    min_lr: Optional[float] = option(None, low=0.0)
    cyclic_mode: Optional[str] = option(None, choices=["triangular", "triangular2", "exp_range"])
    pct_start: Optional[float] = option(None, low=0.0, high=1.0)
    anneal_strategy: Optional[str] = option(None, choices=["cos", "linear"])
    div_factor: Optional[float] = option(None, low=0.0, low_open=True)
    final_div_factor: Optional[float] = option(None, low=0.0, low_open=True)
    three_phase: Optional[bool] = option(None)
    plateau: PlateauConfig = dataclasses.field(default_factory=PlateauConfig)


@dataclasses.dataclass
class TrainingConfig:
    """The training loop. At most one of the three clipping keys may be set."""

    epochs: int = option(100, low=1)
    batch_size: int = option(64, low=1)
    label_smoothing: float = option(0.0, low=0.0, high=1.0, high_open=True)
    accumulation_steps: int = option(1, low=1)
    accumulation_schedule: Optional[list[list[int]]] = option(None)
    accumulation_adaptive: bool = option(False)
    clip_value: Optional[float] = option(None, low=0.0, low_open=True)
    clip_norm: Optional[float] = option(None, low=0.0, low_open=True)
    global_clip_norm: Optional[float] = option(None, low=0.0, low_open=True)
    verbose: int = option(1, choices=[0, 1, 2])
    noise_scale: bool = option(False)
    nan_guard: bool = option(True)


@dataclasses.dataclass
class EarlyStoppingConfig:
    """Early stopping (`callbacks.EarlyStopping`). `monitor` also selects `best.keras`."""

    enabled: bool = option(True)
    monitor: str = option("val_loss", choices=["val_loss", "val_accuracy", "loss", "accuracy"])
    mode: str = option("auto", choices=["auto", "min", "max"])
    patience: int = option(10, low=0)
    min_delta: float = option(0.0, low=0.0)
    min_delta_mode: str = option("absolute", choices=["absolute", "relative"])
    start_from_epoch: int = option(0, low=0)
    check_finite: bool = option(True)
    stopping_threshold: Optional[float] = option(None)
    divergence_threshold: Optional[float] = option(None)


@dataclasses.dataclass
class OutputConfig:
    """Where the run directory goes: `<dir>/<name>-<timestamp>/`, or `<dir>/<name>/`."""

    dir: str = option("runs")
    name: Optional[str] = option(None)
    timestamp: bool = option(True)


@dataclasses.dataclass
class TuningConfig:
    """How `python -m app tune` explores the `search` space (see the README).

    `max_trials` bounds random and Bayesian searches; Hyperband's brackets follow from
    `training.epochs` and `hyperband_factor`. `trials_per_process` runs that many trials in
    each fresh worker process (`0`: all in one process); `null` means 10 on TensorFlow, whose
    memory grows with every trial, and 0 on JAX and PyTorch.
    """

    tuner: str = option("random", choices=list(TUNERS))
    max_trials: int = option(10, low=1)
    objective: str = option("val_loss", choices=["val_loss", "val_accuracy"])
    executions_per_trial: int = option(1, low=1)
    hyperband_factor: int = option(3, low=2)
    max_consecutive_failed_trials: int = option(3, low=1)
    trials_per_process: Optional[int] = option(None, low=0)


@dataclasses.dataclass
class DistributionConfig:
    """Training on several devices: `none`, `mirrored` or `tpu` (TensorFlow), `data-parallel`
    (JAX). `training.batch_size` is the global batch, split over the devices. `tpu` names the
    Cloud TPU to connect to (`null`: the TPU VM's own chips)."""

    strategy: str = option("none", choices=list(DISTRIBUTION_STRATEGIES))
    tpu: Optional[str] = option(None)


@dataclasses.dataclass
class DistillationConfig:
    """`python -m app distill`: the `model` section is the student (`model.size` defaults to
    `student` there), trained on α·CE(labels) + (1−α)·T²·KL(teacher ‖ student) at
    temperature T (Hinton et al., 2015)."""

    temperature: float = option(4.0, low=0.0, low_open=True)
    alpha: float = option(0.1, low=0.0, high=1.0)


@dataclasses.dataclass
class Config:
    """The whole configuration of a run. `search` maps dotted keys to the distributions that
    `python -m app tune` draws them from (`app.search_space`)."""

    seed: int = option(42, low=0)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    distribution: DistributionConfig = dataclasses.field(default_factory=DistributionConfig)
    tuning: TuningConfig = dataclasses.field(default_factory=TuningConfig)
    distillation: DistillationConfig = dataclasses.field(default_factory=DistillationConfig)
    search: dict = option({})


def load_config(path=None, overrides=(), defaults=None):
    """Builds a validated `Config` from defaults, an optional YAML file and overrides.

    Args:
        path: a YAML file whose keys replace the defaults, or `None`.
        overrides: `"section.key=value"` strings, applied after the file; the value is
            read as YAML (`0.1`, `true`, `[8, 8]`, `null`).
        defaults: dotted keys that replace built-in defaults for one command (`distill`
            builds a student: `{"model.size": "student"}`); the file and overrides win.

    Returns:
        The validated `Config`.

    Raises:
        UserError: on a missing or malformed file, an unknown key, a wrong type or an
            out-of-range value, naming the key.
    """
    tree = {}
    for key, value in (defaults or {}).items():
        _set_dotted(tree, key, value)
    if path is not None:
        _merge(tree, _read_yaml(path))
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(tree, key, value)
    return _build(Config, tree, prefix="")


def with_values(config, values):
    """`config` with dotted keys replaced, validated like a loaded configuration.

    Example:

    ```python
    trial = with_values(config, {"schedule.lr": 3e-3, "model.width": 128})
    ```
    """
    tree = config_to_dict(config)
    for key, value in values.items():
        _set_dotted(tree, key, value)
    return _build(Config, tree, prefix="")


def field_of(dotted_key):
    """The type annotation and metadata of a configuration key such as `"schedule.lr"`.

    Raises:
        UserError: if the key names no field, or names a section.
    """
    parts = dotted_key.split(".")
    cls = Config
    for depth, name in enumerate(parts):
        fields = {field.name: field for field in dataclasses.fields(cls)}
        if name not in fields:
            raise UserError(_unknown_key_message(dotted_key, name, fields))
        annotation = typing.get_type_hints(cls)[name]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(annotation):
                raise UserError(f"{dotted_key} is a section; name one of its keys")
            return annotation, fields[name].metadata
        if not dataclasses.is_dataclass(annotation):
            raise UserError(f"{dotted_key}: {name} is not a section")
        cls = annotation


def check_value(key, value, annotation, metadata):
    """`value` checked and coerced as the value of `key` (see `field_of`)."""
    return _check_value(key, value, annotation, metadata)


def config_to_dict(config):
    """The configuration as plain nested dicts, lists and scalars."""
    return dataclasses.asdict(config)


def dump_config(config):
    """The configuration as YAML text that `load_config` reads back to an equal `Config`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_hash(config):
    """A short SHA-256 of the resolved configuration, for run metadata."""
    return hashlib.sha256(dump_config(config).encode()).hexdigest()[:16]


def _read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise UserError(f"config file {path} is not valid YAML{where}: {problem}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise UserError(f"config file {path} must be a mapping of sections (data:, model:, ...)")
    return tree


def _merge(tree, update):
    """Writes `update` into `tree`, section by section."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def _parse_override(text):
    key, separator, raw_value = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise UserError(f"--set {text!r} must look like section.key=value, e.g. training.epochs=20")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return key, value


def _set_dotted(tree, dotted_key, value):
    *sections, leaf = dotted_key.split(".")
    node = tree
    for section in sections:
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {dotted_key}: {section} is not a section")
        node = child
    node[leaf] = value


def _build(cls, tree, prefix):
    if not isinstance(tree, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {tree!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for key in tree:
        if key not in fields:
            raise UserError(_unknown_key_message(prefix + str(key), str(key), fields))
    values = {}
    hints = typing.get_type_hints(cls)
    for name, field in fields.items():
        if name not in tree:
            continue
        key = prefix + name
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], tree[name], key + ".")
        else:
            values[name] = _check_value(key, tree[name], hints[name], field.metadata)
    instance = cls(**values)
    _check_section(instance, prefix)
    return instance


def _unknown_key_message(key, name, fields):
    if key in MOVED_KEYS:
        return f"config key {key!r} is now {MOVED_KEYS[key]!r}; rename it"
    close = difflib.get_close_matches(name, list(fields), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(fields)}"
    return f"unknown config key {key!r}; {hint}"


def _type_name(annotation):
    if _is_optional(annotation):
        return _type_name(_inner(annotation)) + " or null"
    if typing.get_origin(annotation) is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            dict: "a mapping"}[annotation]


def _is_optional(annotation):
    origin = typing.get_origin(annotation)
    return origin in (Union, types.UnionType) and type(None) in typing.get_args(annotation)


def _inner(annotation):
    return next(arg for arg in typing.get_args(annotation) if arg is not type(None))


def _check_value(key, value, annotation, metadata):
    declared = annotation
    if isinstance(value, str) and value in metadata.get("keywords", ()):
        return value
    if _is_optional(annotation):
        if value is None:
            return None
        annotation = _inner(annotation)
    try:
        value = _coerce(key, value, annotation)
    except UserError:
        expected = " or ".join([_type_name(declared), *metadata.get("keywords", ())])
        raise UserError(f"{key} must be {expected}; got {value!r}") from None
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(str(choice) for choice in choices)
        raise UserError(f"{key} must be one of {allowed}; got {value!r}")
    _check_range(key, value, metadata)
    return value


def _coerce(key, value, annotation):
    wrong_type = UserError(f"{key} must be {_type_name(annotation)}; got {value!r}")
    if typing.get_origin(annotation) is list:
        if not isinstance(value, list):
            raise wrong_type
        item_type = typing.get_args(annotation)[0]
        return [_coerce(f"{key}[{index}]", item, item_type) for index, item in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong_type
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong_type
        return value
    if annotation is float:
        # PyYAML reads `1e-3` (no dot) as a string; accept any text that is a number.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise wrong_type from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong_type
        return float(value)
    if annotation is str:
        if not isinstance(value, str) or not value:
            raise wrong_type
        return value
    if annotation is dict:
        if not isinstance(value, dict):
            raise wrong_type
        return value
    raise TypeError(f"unsupported configuration type {annotation!r} for {key}")


def _check_range(key, value, metadata):
    values = value if isinstance(value, list) else [value]
    low, high = metadata.get("low"), metadata.get("high")
    for number in values:
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        too_low = low is not None and (number <= low if metadata["low_open"] else number < low)
        too_high = high is not None and (number >= high if metadata["high_open"] else number > high)
        if too_low or too_high:
            raise UserError(f"{key} must be {_range_text(metadata)}; got {value!r}")


def _range_text(metadata):
    low, high = metadata["low"], metadata["high"]
    parts = []
    if low is not None:
        parts.append(f"{'>' if metadata['low_open'] else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if metadata['high_open'] else '<='} {high}")
    return " and ".join(parts)


def _check_section(section, prefix):
    """Checks that involve more than one key of a section."""
    if isinstance(section, DataConfig):
        if section.validation_fraction + section.test_fraction >= 1.0:
            raise UserError(
                f"{prefix}validation_fraction + {prefix}test_fraction must be < 1 to leave "
                f"training data; got {section.validation_fraction} + {section.test_fraction}"
            )
        if section.image_size is not None and (
            len(section.image_size) != 2 or min(section.image_size) < 1
        ):
            raise UserError(f"{prefix}image_size must be [height, width]; got {section.image_size}")
    elif isinstance(section, OptimizerConfig):
        accepted = OPTIMIZER_PARAMETERS[section.name] | COMMON_OPTIMIZER_KEYS
        for field in dataclasses.fields(section):
            if getattr(section, field.name) is not None and field.name not in accepted:
                raise UserError(
                    f"{prefix}{field.name} does not apply to optimizer {section.name!r} "
                    f"(it takes: {', '.join(sorted(OPTIMIZER_PARAMETERS[section.name]))})"
                )
    elif isinstance(section, TrainingConfig):
        schedule = section.accumulation_schedule or []
        if any(len(pair) != 2 or pair[0] < 1 or pair[1] < 1 for pair in schedule):
            raise UserError(f"{prefix}accumulation_schedule must list [epoch, steps] pairs with "
                            f"epoch >= 1 and steps >= 1, e.g. [[1, 1], [10, 4]]; got {schedule}")
        if section.accumulation_adaptive and not section.noise_scale:
            raise UserError(f"{prefix}accumulation_adaptive follows the gradient noise scale; "
                            f"set {prefix}noise_scale: true too")
        clipping = [
            name for name in ("clip_value", "clip_norm", "global_clip_norm")
            if getattr(section, name) is not None
        ]
        if len(clipping) > 1:
            raise UserError(
                f"set at most one of {prefix}clip_value, {prefix}clip_norm and "
                f"{prefix}global_clip_norm; got {', '.join(clipping)}"
            )
    elif isinstance(section, ScheduleConfig):
        _check_schedule(section, prefix)
    elif isinstance(section, Config):
        from app.search_space import check_objective, parse_search_space

        check_objective(parse_search_space(section.search), section.tuning.objective)
    elif isinstance(section, OutputConfig):
        if section.name is not None and ("/" in section.name or section.name.startswith(".")):
            raise UserError(f"{prefix}name must be a plain folder name; got {section.name!r}")


def _check_schedule(section, prefix):
    accepted = SCHEDULE_PARAMETERS[section.name]
    for name in set().union(*SCHEDULE_PARAMETERS.values()) - accepted:
        if getattr(section, name) is not None:
            takes = ", ".join(sorted(accepted)) or "no schedule parameters"
            raise UserError(f"{prefix}{name} does not apply to schedule {section.name!r} "
                            f"(it takes: {takes})")
    required = REQUIRED_SCHEDULE_PARAMETERS.get(section.name)
    if required and getattr(section, required) is None:
        raise UserError(f"schedule {section.name!r} needs {prefix}{required} "
                        f"(in {prefix}unit: {section.unit})")
    if section.warmup > 0 and section.name not in WARMUP_SCHEDULES:
        raise UserError(f"{prefix}warmup does not apply to {section.name!r}, which warms up "
                        f"by itself; set {prefix}warmup to 0")
    if section.name == "multistep" and not section.milestones:
        raise UserError(f"{prefix}milestones must list at least one step")
    if section.name == "cyclic" and isinstance(section.lr, float) and section.min_lr is not None \
            and section.min_lr >= section.lr:
        raise UserError(f"cyclic: {prefix}min_lr must be below {prefix}lr; "
                        f"got {section.min_lr} and {section.lr}")
