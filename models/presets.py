"""Teacher and student sizes, and building a model from an `app.config.ModelConfig`."""

from models.cnn import build_cnn
from models.mlp import build_mlp

# Teachers are the models worth distilling; students are ~20-60× smaller and meant for export.
SIZES = {
    ("mlp", "teacher"): {"width": 256, "depth": 2},
    ("mlp", "student"): {"width": 32, "depth": 1},
    ("cnn", "teacher"): {"filters": 32, "depth": 2, "width": 128},
    ("cnn", "student"): {"filters": 8, "depth": 2, "width": 32},
}


def architecture_arguments(model_config):
    """The size arguments of the configured architecture: the preset, then any overrides."""
    arguments = dict(SIZES[(model_config.architecture, model_config.size)])
    for key in arguments:
        override = getattr(model_config, key)
        if override is not None:
            arguments[key] = override
    return arguments


def build_model(model_config, input_shape, num_classes, mean=None, variance=None):
    """Builds the classifier that `model_config` describes.

    Args:
        model_config: an `app.config.ModelConfig`.
        input_shape: shape of one sample.
        num_classes: number of classes (logits).
        mean: training-set statistics to standardise inputs with inside the model, or `None`.
        variance: the matching variance.

    Example:

    ```python
    model = build_model(ModelConfig(architecture="cnn", size="student"), (8, 8, 1), 10)
    ```
    """
    builder = {"mlp": build_mlp, "cnn": build_cnn}[model_config.architecture]
    return builder(
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
        **architecture_arguments(model_config),
    )
