"""Loading a configuration: defaults, a YAML file, `--set` overrides; writing it back.

```python
config = load_config("experiment.yaml", overrides=["training.epochs=20", "model.size=student"])
config.training.epochs  # 20
dump_config(config)     # YAML text that reproduces the run exactly
```
"""

import dataclasses
import hashlib
from pathlib import Path

import yaml

from app.config.schema import MOVED_KEYS, Config
from app.config.search_space import check_objective, parse_search_space
from app.config.validation import build_section
from app.errors import UserError


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
    return _validated(tree)


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
    return _validated(tree)


def config_to_dict(config):
    """The configuration as plain nested dicts, lists and scalars."""
    return dataclasses.asdict(config)


def dump_config(config):
    """The configuration as YAML text that `load_config` reads back to an equal `Config`."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_hash(config):
    """A short SHA-256 of the resolved configuration, for run metadata."""
    return hashlib.sha256(dump_config(config).encode()).hexdigest()[:16]


def _validated(tree):
    config = build_section(Config, tree, renamed=MOVED_KEYS)
    check_objective(parse_search_space(config.search), config.tuning.objective)
    return config


def _read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"config file {path} is not UTF-8 text (byte {error.start} cannot be "
                        "decoded); save it as UTF-8") from None
    try:
        _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
        tree = yaml.safe_load(text)
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


def _check_unique_keys(node, path):
    """A key given twice in one mapping is an error: YAML loaders silently keep the last."""
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise UserError(f"config file {path} gives {key.value!r} twice (lines "
                                    f"{seen[key.value] + 1} and {key.start_mark.line + 1}); "
                                    "keep one")
                seen[key.value] = key.start_mark.line
            _check_unique_keys(value, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_unique_keys(item, path)


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
