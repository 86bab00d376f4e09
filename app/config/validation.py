"""The generic validation engine: typed dataclass sections built from plain YAML trees.

A section is a dataclass whose fields are made with `option` (a default, and the values it
accepts). `build_section` checks a tree of dicts against it, key by key, and reports the first
problem as a one-line `UserError` that names the dotted key: unknown keys get a did-you-mean
(or the new name of a renamed key), wrong types and out-of-range values say what is accepted.
A section may define `check(prefix)` for rules that involve several of its keys; it runs once
the section's own keys are valid.

```python
@dataclasses.dataclass
class TrainingConfig:
    epochs: int = option(100, low=1)

build_section(TrainingConfig, {"epochs": 0}, prefix="training.")
# UserError: training.epochs must be >= 1; got 0
```
"""

import dataclasses
import difflib
import math
import types
import typing
from typing import Union

from app.errors import UserError


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
        "choices": None if choices is None else tuple(choices),
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "keywords": tuple(keywords),
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def build_section(cls, tree, prefix="", renamed=None):
    """An instance of the section `cls` from `tree`, every key checked.

    Args:
        cls: a dataclass section; fields that are dataclasses are nested sections.
        tree: a dict of the keys to set (missing keys take their defaults).
        prefix: the section's dotted prefix, for messages (`"schedule."`).
        renamed: `{old dotted key: new dotted key}` for keys that were renamed.

    Raises:
        UserError: naming the first unknown key, wrong type or out-of-range value.
    """
    if not isinstance(tree, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {tree!r}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for key in tree:
        if key not in fields:
            raise UserError(unknown_key_message(prefix + str(key), str(key), fields, renamed))
    values = {}
    hints = typing.get_type_hints(cls)
    for name, field in fields.items():
        if name not in tree:
            continue
        key = prefix + name
        if dataclasses.is_dataclass(hints[name]):
            values[name] = build_section(hints[name], tree[name], key + ".", renamed)
        else:
            values[name] = check_value(key, tree[name], hints[name], field.metadata)
    instance = cls(**values)
    if hasattr(instance, "check"):
        instance.check(prefix)
    return instance


def field_of(root, dotted_key, renamed=None):
    """The type annotation and metadata of a key such as `"schedule.lr"` of section `root`.

    Raises:
        UserError: if the key names no field, or names a section.
    """
    parts = dotted_key.split(".")
    cls = root
    for depth, name in enumerate(parts):
        fields = {field.name: field for field in dataclasses.fields(cls)}
        if name not in fields:
            raise UserError(unknown_key_message(dotted_key, name, fields, renamed))
        annotation = typing.get_type_hints(cls)[name]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(annotation):
                raise UserError(f"{dotted_key} is a section; name one of its keys")
            return annotation, fields[name].metadata
        if not dataclasses.is_dataclass(annotation):
            raise UserError(f"{dotted_key}: {name} is not a section")
        cls = annotation


def unknown_key_message(key, name, fields, renamed=None):
    """The message for an unknown `key`: its new name if it was renamed, else a did-you-mean."""
    if renamed and key in renamed:
        return f"config key {key!r} is now {renamed[key]!r}; rename it"
    close = difflib.get_close_matches(name, list(fields), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(fields)}"
    return f"unknown config key {key!r}; {hint}"


def check_value(key, value, annotation, metadata):
    """`value` checked and coerced as the value of `key` (see `field_of`).

    Raises:
        UserError: naming `key` and what it accepts.
    """
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
        expected = " or ".join([type_name(declared), *metadata.get("keywords", ())])
        raise UserError(f"{key} must be {expected}; got {value!r}") from None
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(str(choice) for choice in choices)
        raise UserError(f"{key} must be one of {allowed}; got {value!r}")
    _check_range(key, value, metadata)
    return value


def type_name(annotation):
    """How a message names a type: `"a number or null"`, `"a list of an integer"`."""
    if _is_optional(annotation):
        return type_name(_inner(annotation)) + " or null"
    if typing.get_origin(annotation) is list:
        return f"a list of {type_name(typing.get_args(annotation)[0])}"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string",
            dict: "a mapping"}[annotation]


def base_type(annotation):
    """`float` for `Optional[float]`, `list` for `list[int]`, else the annotation."""
    if typing.get_origin(annotation) is list:
        return list
    arguments = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if arguments:
        return base_type(arguments[0])
    return annotation


def _is_optional(annotation):
    origin = typing.get_origin(annotation)
    return origin in (Union, types.UnionType) and type(None) in typing.get_args(annotation)


def _inner(annotation):
    return next(arg for arg in typing.get_args(annotation) if arg is not type(None))


def _coerce(key, value, annotation):
    wrong_type = UserError(f"{key} must be {type_name(annotation)}; got {value!r}")
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
