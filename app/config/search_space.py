"""The `search` section: which configuration keys `python -m app tune` varies, and how.

Each entry maps a dotted configuration key to one distribution:

```yaml
search:
  schedule.lr: {log_uniform: [1.0e-4, 1.0e-1]}
  model.width: {choice: [64, 128, 256]}
  training.label_smoothing: {uniform: [0.0, 0.2]}
  training.batch_size: {choice: [32, 64]}
  model.depth: {int: [1, 3]}          # [low, high] or [low, high, step]
```

Every candidate value is checked like the key itself (type, choices, range) when the
configuration loads, so a search never starts with a value that `fit` would refuse.

```python
dimensions = parse_search_space(config.search)
values = declare(hp, dimensions)      # inside a keras_tuner.HyperModel.build
trial_config = with_values(config, values)
```
"""

import dataclasses

from app.config.schema import MOVED_KEYS, Config
from app.config.validation import base_type, check_value, field_of
from app.errors import UserError

DISTRIBUTIONS = ("choice", "uniform", "log_uniform", "int")
# Keys that change what the loss measures: trials that differ in them have incomparable losses.
LOSS_DEFINING_KEYS = ("training.label_smoothing", "model.l1", "model.l2")
# The data split, the seed and the output are what trials are compared on, so they stay fixed.
SEARCHABLE_SECTIONS = (
    "augmentation", "model", "optimizer", "schedule", "training", "early_stopping")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched key: `kind` is a distribution name, `values` its choices or bounds."""

    key: str
    kind: str
    values: tuple


def parse_search_space(search):
    """Checks a `search` mapping and returns its `Dimension`s in order.

    Raises:
        UserError: naming the key of an unknown or unsearchable key, a malformed
            distribution, or a candidate value the key does not accept.
    """
    dimensions = []
    for key, spec in search.items():
        try:
            dimensions.append(_dimension(str(key), spec))
        except UserError as error:
            message = str(error)
            prefix = "" if message.startswith("search.") else f"search.{key}: "
            raise UserError(prefix + message) from None
    return dimensions


def check_objective(dimensions, objective):
    """Refuses `val_loss` as the objective when a searched key changes what the loss is.

    A smoothed or penalised loss is larger for the same predictions, so comparing it across
    trials would favour no smoothing and no penalty, whatever they do to accuracy.

    Raises:
        UserError: naming the key and the objective to use instead.
    """
    changing = [dimension.key for dimension in dimensions if dimension.key in LOSS_DEFINING_KEYS]
    if objective == "val_loss" and changing:
        raise UserError(f"search.{changing[0]} changes what val_loss measures, so trials would "
                        "not be comparable on it; set tuning.objective: val_accuracy")


def declare(hp, dimensions):
    """Declares `dimensions` on a `keras_tuner.HyperParameters`; returns the drawn values."""
    for dimension in dimensions:
        if dimension.kind == "choice":
            hp.Choice(dimension.key, list(dimension.values))
        elif dimension.kind == "int":
            low, high, step = dimension.values
            hp.Int(dimension.key, low, high, step=step)
        else:
            low, high = dimension.values
            sampling = "log" if dimension.kind == "log_uniform" else "linear"
            hp.Float(dimension.key, low, high, sampling=sampling)
    return {dimension.key: hp.get(dimension.key) for dimension in dimensions}


def _dimension(key, spec):
    where = f"search.{key}"
    if key.split(".")[0] not in SEARCHABLE_SECTIONS:
        raise UserError(f"{where}: only keys of {', '.join(SEARCHABLE_SECTIONS)} can be searched "
                        "(data, seed and output stay fixed so that trials are comparable)")
    annotation, metadata = field_of(Config, key, renamed=MOVED_KEYS)
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise UserError(f"{where} must be one of {{choice: [...]}}, {{uniform: [low, high]}}, "
                        f"{{log_uniform: [low, high]}} or {{int: [low, high]}}; got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise UserError(f"{where}.{kind} must be a non-empty list; got {values!r}")
    base = base_type(annotation)
    if base is list:
        raise UserError(f"{where}: list-valued keys cannot be searched")
    if kind == "choice":
        if any(value is None for value in values):
            raise UserError(f"{where}.choice cannot contain null; list concrete values")
        checked = [check_value(key, value, annotation, metadata) for value in values]
        if len({type(value) for value in checked}) > 1:
            raise UserError(f"{where}.choice values must all have one type; got {values}")
        if len(set(checked)) != len(checked):
            raise UserError(f"{where}.choice lists a value twice: {values}")
        return Dimension(key, kind, tuple(checked))
    if kind == "int":
        if base is not int:
            raise UserError(f"{where}: int ranges need an integer key; use choice or uniform")
        if len(values) not in (2, 3) or not all(type(value) is int for value in values):
            raise UserError(f"{where}.int must be [low, high] or [low, high, step] integers; "
                            f"got {values}")
        low, high, step = [*values, 1][:3]
        _check_bounds(where, kind, key, low, high, annotation, metadata)
        if step < 1:
            raise UserError(f"{where}.int step must be >= 1; got {step}")
        return Dimension(key, kind, (low, high, step))
    if base is not float:
        raise UserError(f"{where}: {kind} needs a numeric (float) key; use choice")
    if len(values) != 2:
        raise UserError(f"{where}.{kind} must be [low, high]; got {values}")
    low, high = (check_value(key, value, annotation, metadata) for value in values)
    _check_bounds(where, kind, key, low, high, annotation, metadata)
    if kind == "log_uniform" and low <= 0:
        raise UserError(f"{where}.log_uniform needs low > 0; got {low}")
    return Dimension(key, kind, (low, high))


def _check_bounds(where, kind, key, low, high, annotation, metadata):
    for value in (low, high):
        if not isinstance(check_value(key, value, annotation, metadata), (int, float)):
            raise UserError(f"{where}.{kind} bounds must be numbers; got [{low}, {high}]")
    if not low < high:
        raise UserError(f"{where}.{kind} needs low < high; got [{low}, {high}]")
