"""The architectures that `model.architecture` chooses, their size presets, and building one.

A row's keys are the size keys it takes (`width`, `depth`, `filters`): each comes from the
`model.size` preset unless the configuration sets it. Adding an architecture: its builder in
`models/` (taking `input_shape`, `num_classes`, the common options and its size keys), one row
here, and its tests.

```python
model = build_model(ModelConfig(architecture="cnn", size="student"), (8, 8, 1), 10)
```
"""

import dataclasses
from typing import Mapping

from app.tables import Derived, Row, Table

SIZES = ("teacher", "student")
_PRESET = Derived("preset")


@dataclasses.dataclass(frozen=True)
class Architecture(Row):
    """A `Row` with size presets.

    Attributes:
        presets: `model.size` → size keys (teachers are the models worth distilling;
            students are 14-35× smaller on digits and meant for export).
        input_rank: the rank of one sample the builder needs (3: images), or `None` for any.
    """

    presets: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    input_rank: int = None

    def __post_init__(self):
        if set(self.presets) != set(SIZES) or any(set(preset) != set(self.keys)
                                                  for preset in self.presets.values()):
            raise ValueError(f"architecture {self.name!r} needs a preset of {list(self.keys)} "
                             f"for each of {SIZES}")
        columns = {size: ", ".join(f"{key} {value}" for key, value in preset.items())
                   for size, preset in self.presets.items()}
        object.__setattr__(self, "columns", {**columns, **self.columns})

    def size_arguments(self, model_config):
        """The size keys of `model_config`: the preset of its size, then any overrides."""
        arguments = dict(self.presets[model_config.size])
        for key in arguments:
            if getattr(model_config, key) is not None:
                arguments[key] = getattr(model_config, key)
        return arguments


def _mlp():
    from models import build_mlp

    return build_mlp


def _cnn():
    from models import build_cnn

    return build_cnn


ARCHITECTURES = Table("model", "architecture", [
    Architecture("mlp", _mlp, {"width": _PRESET, "depth": _PRESET},
                 {"builder": "`models.build_mlp`", "input": "any (flattened)"},
                 presets={"teacher": {"width": 256, "depth": 2},
                          "student": {"width": 32, "depth": 1}}),
    Architecture("cnn", _cnn, {"filters": _PRESET, "depth": _PRESET, "width": _PRESET},
                 {"builder": "`models.build_cnn`", "input": "images (height, width, channels)"},
                 presets={"teacher": {"filters": 32, "depth": 2, "width": 128},
                          "student": {"filters": 8, "depth": 2, "width": 32}},
                 input_rank=3),
], columns=("builder", "input", *SIZES), keys_heading="size keys", noun="architecture")


def build_model(model_config, input_shape, num_classes, mean=None, variance=None):
    """Builds the classifier that `model_config` describes; it outputs logits.

    Args:
        model_config: an `app.config.ModelConfig`.
        input_shape: shape of one sample.
        num_classes: number of classes (logits).
        mean: training-set statistics to standardise inputs with inside the model, or `None`.
        variance: the matching variance.
    """
    row = ARCHITECTURES.row(model_config.architecture)
    return row.build()(
        input_shape,
        num_classes,
        activation=model_config.activation,
        initializer=model_config.initializer,
        normalization=model_config.normalization,
        dropout=model_config.dropout,
        l1=model_config.l1,
        l2=model_config.l2,
        mean=mean,
        variance=variance,
        name=f"{model_config.architecture}_{model_config.size}",
        **row.size_arguments(model_config),
    )
