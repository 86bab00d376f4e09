"""The architectures that `model.architecture` chooses, their size presets, and building one.

A row's keys are the size keys it takes (`width`, `depth`, `filters`), each from the
`model.size` preset unless the configuration sets it, and the keys of a pretrained body
(`backbone_weights`, `input_size`, `backbone`). Adding an architecture: its builder in
`models/` (taking `input_shape`, `num_classes`, the common options it uses and its keys), one
row here, and its tests.

```python
model = build_model(ModelConfig(architecture="cnn", size="student"), (8, 8, 1), 10)
```
"""

import dataclasses
from pathlib import Path
from typing import Mapping

from app.errors import UserError
from app.tables import REQUIRED, Derived, Row, Table

SIZES = ("teacher", "student")
_PRESET = Derived("preset")
# The model options every builder may take; a row lists those its builder uses.
COMMON_OPTIONS = ("activation", "initializer", "normalization", "dropout", "l1", "l2")
# `model.architecture` → the `keras.applications` model whose body it uses.
APPLICATIONS = {"mobilenet_v2": "MobileNetV2", "mobilenet_v3_small": "MobileNetV3Small",
                "mobilenet_v3_large": "MobileNetV3Large", "efficientnet_b0": "EfficientNetB0",
                "resnet50": "ResNet50"}


@dataclasses.dataclass(frozen=True)
class Architecture(Row):
    """A `Row` with size presets.

    Attributes:
        presets: `model.size` → size keys (teachers are the models worth distilling;
            students are 14-35× smaller on digits and meant for export); empty for a
            pretrained body, whose size is its own.
        input_rank: the rank of one sample the builder needs (3: images), or `None` for any.
        options: the common model options (`COMMON_OPTIONS`) its builder takes.
    """

    presets: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    input_rank: int = None
    options: tuple = COMMON_OPTIONS

    @property
    def has_backbone(self):
        """Whether the model has a pretrained body (named `backbone`) that fine-tuning freezes."""
        return self.name in APPLICATIONS or self.name == "transfer"

    def __post_init__(self):
        size_keys = {key for key, default in self.keys.items() if default is _PRESET}
        presets = self.presets or {size: {} for size in SIZES}
        if set(presets) != set(SIZES) or any(set(preset) != size_keys
                                             for preset in presets.values()):
            raise ValueError(f"architecture {self.name!r} needs a preset of {sorted(size_keys)} "
                             f"for each of {SIZES}")
        columns = {size: ", ".join(f"{key} {value}" for key, value in preset.items()) or "–"
                   for size, preset in presets.items()}
        object.__setattr__(self, "presets", presets)
        object.__setattr__(self, "columns", {**columns, **self.columns})

    def arguments(self, model_config):
        """The row's keys from `model_config`: size keys from the preset of its size unless
        set, the others as set or by default (`Derived` ones `None`)."""
        arguments = self.resolve(model_config)
        for key, value in self.presets[model_config.size].items():
            if arguments[key] is None:
                arguments[key] = value
        return arguments


def _mlp():
    from models import build_mlp

    return build_mlp


def _cnn():
    from models import build_cnn

    return build_cnn


def _application(name):
    """The builder of a Keras application's classifier (ImageNet weights by default)."""
    def build():
        from models.backbones import build_application_classifier

        def builder(input_shape, num_classes, *, backbone_weights, input_size, **options):
            weights = {"imagenet": "imagenet", "none": None}.get(backbone_weights,
                                                                  backbone_weights)
            return build_application_classifier(input_shape, num_classes, application=name,
                                                weights=weights, input_size=input_size,
                                                **options)
        return builder
    return build


def _transfer():
    from models.backbones import build_transfer_classifier

    def builder(input_shape, num_classes, *, backbone, **options):
        return build_transfer_classifier(input_shape, num_classes,
                                         source=load_source_model(backbone), **options)
    return builder


def load_source_model(path):
    """The model of a `.keras` file, or of a run directory's `best.keras`."""
    import callbacks  # noqa: F401  (registers the losses and schedules a run's model may hold)
    from app.model_files import load_model_file

    path = Path(path)
    return load_model_file(path / "best.keras" if path.is_dir() else path)


_APPLICATION_KEYS = {"backbone_weights": "imagenet",
                     "input_size": Derived("the data's size, at least 32×32")}
_HEAD_OPTIONS = ("dropout", "l1", "l2")


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
    *(Architecture(name, _application(name), _APPLICATION_KEYS,
                   {"builder": f"`keras.applications.{constructor}` body, new head",
                    "input": "images (1 or 3 channels)"},
                   input_rank=3, options=_HEAD_OPTIONS)
      for name, constructor in APPLICATIONS.items()),
    Architecture("transfer", _transfer, {"backbone": REQUIRED},
                 {"builder": "the body of `model.backbone` (a run or `.keras`), new head",
                  "input": "the source model's"}, options=_HEAD_OPTIONS),
], columns=("builder", "input", *SIZES), keys_heading="keys", noun="architecture")


def build_model(model_config, input_shape, num_classes, mean=None, variance=None):
    """Builds the classifier that `model_config` describes; it outputs logits.

    Args:
        model_config: an `app.config.ModelConfig`.
        input_shape: shape of one sample.
        num_classes: number of classes (logits).
        mean: training-set statistics to standardise inputs with inside the model, or `None`
            (a pretrained body applies its own preprocessing instead).
        variance: the matching variance.

    Raises:
        UserError: if pretrained weights cannot be had, or a transferred body does not take
            the data.
    """
    from models.backbones import WeightsUnavailable

    row = ARCHITECTURES.row(model_config.architecture)
    options = {option: getattr(model_config, option) for option in row.options}
    if "normalization" in row.options:  # the project's own builders standardise inputs
        options.update(mean=mean, variance=variance)
    try:
        return row.build()(input_shape, num_classes,
                           name=f"{model_config.architecture}_{model_config.size}",
                           **options, **row.arguments(model_config))
    except WeightsUnavailable as error:
        raise UserError(
            f"model.backbone_weights: cannot load {error} (no network?); let Keras download "
            "them once on a connected machine (they are kept in ~/.keras/models/, copy that "
            "folder over), or set model.backbone_weights to a weights file or none") from None
    except ValueError as error:  # a body that cannot take the data's samples
        if not row.has_backbone:
            raise
        source = (f"model.backbone {model_config.backbone}" if model_config.backbone
                  else f"model.architecture {model_config.architecture}")
        raise UserError(f"{source}: {error}; use data it can take") from None
