"""Declarative tables of the families that configurations choose from.

Each family (schedules, optimizers, architectures) is one `Table` of `Row`s in its own module:
the row's name is what `schedule.name`, `optimizer.name` or `model.architecture` accepts, its
`keys` are the section keys it takes with their defaults, and its `build` makes the object.
Validation (`Table.check`), the builders and the README's tables (`Table.markdown`) all read
the same rows, so adding a member of a family is one row (and its class, and its tests).

Nothing here imports Keras: configurations are checked before a backend starts, and each
row's `build` imports what it needs when it runs.

```python
from app.tables.schedules import SCHEDULES
SCHEDULES.names()                    # ('constant', 'step', ...)
SCHEDULES.row("step").keys           # {'step_size': REQUIRED, 'gamma': 0.1}
print(SCHEDULES.markdown())          # the README's table
```
"""

import dataclasses
from typing import Any, Callable, Mapping

from app.errors import UserError


class _Required:
    """The default of a key that the configuration must set."""

    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()


@dataclasses.dataclass(frozen=True)
class Derived:
    """A default that the builder computes from other values; `text` says how, for people."""

    text: str


@dataclasses.dataclass(frozen=True)
class Row:
    """One member of a family.

    Attributes:
        name: the value of the section's selecting key (e.g. `schedule.name: step`).
        build: the function that builds it; its arguments depend on the family.
        keys: the section keys it takes (beyond those every member takes), each with its
            default: a value, `None` (the library's own default), `REQUIRED` or `Derived`.
        columns: more README columns (e.g. the class and its PyTorch twin), by heading.
    """

    name: str
    build: Callable
    keys: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def required(self):
        """The keys that the configuration must set for this member."""
        return [key for key, default in self.keys.items() if default is REQUIRED]

    def resolve(self, section):
        """This member's keys read from `section`, unset ones replaced by their defaults.

        `REQUIRED` keys are set (`Table.check` made sure); `Derived` defaults come back as
        `None` for the builder to compute.
        """
        values = {}
        for key, default in self.keys.items():
            value = getattr(section, key)
            if value is None and not isinstance(default, (_Required, Derived)):
                value = default
            values[key] = value
        return values


class Table:
    """The rows of one family, keyed by name.

    Args:
        family: what the rows are, for messages (`"schedule"`).
        selector: the section key that names a row (`"name"`, `"architecture"`).
        rows: the `Row`s, in the order the README lists them.
        columns: the README's extra column headings, in order (each row's `columns`).
        keys_heading: the README heading of the keys column.
        noun: what messages call a row (default: `family`).
    """

    def __init__(self, family, selector, rows, columns=(), keys_heading="keys (default)",
                 noun=None):
        self.family = family
        self.selector = selector
        self.noun = noun or family
        self._rows = {row.name: row for row in rows}
        if len(self._rows) != len(rows):
            raise ValueError(f"two {family} rows share a name")
        self.columns = tuple(columns)
        self.keys_heading = keys_heading

    def names(self):
        return tuple(self._rows)

    def rows(self):
        return tuple(self._rows.values())

    def row(self, name):
        return self._rows[name]

    def all_keys(self):
        """Every key that some row takes, in first-seen order."""
        return list(dict.fromkeys(key for row in self.rows() for key in row.keys))

    def check(self, section, prefix, required_hint=""):
        """Refuses keys that the selected row does not take, and missing required keys.

        Args:
            section: the config section (a dataclass with a field per key of every row).
            prefix: the section's dotted prefix for messages, e.g. `"schedule."`.
            required_hint: text appended to the message of a missing required key.

        Raises:
            UserError: naming the key and what the selected row takes.
        """
        name = getattr(section, self.selector)
        row = self.row(name)
        for key in self.all_keys():
            if key not in row.keys and getattr(section, key) is not None:
                takes = ", ".join(sorted(row.keys)) or f"no {self.noun} parameters"
                raise UserError(f"{prefix}{key} does not apply to {self.noun} {name!r} "
                                f"(it takes: {takes})")
        for key in row.required():
            if getattr(section, key) is None:
                raise UserError(f"{self.noun} {name!r} needs {prefix}{key}{required_hint}")

    def markdown(self):
        """The README's table of this family: one line per row."""
        headings = [f"`{self.family}.{self.selector}`", *self.columns, self.keys_heading]
        lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
        for row in self.rows():
            cells = [f"`{row.name}`", *(row.columns[column] for column in self.columns),
                     _keys_text(row.keys)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _keys_text(keys):
    parts = []
    for key, default in keys.items():
        if default is REQUIRED:
            parts.append(f"`{key}` (required)")
        elif isinstance(default, Derived):
            parts.append(f"`{key}` ({default.text})")
        elif default is None:
            parts.append(f"`{key}`")
        else:
            parts.append(f"`{key}` ({_value_text(default)})")
    return ", ".join(parts) or "–"


def _value_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
