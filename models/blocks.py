"""Building blocks shared by the model builders: input preprocessing and a normalised layer."""

import keras


def preprocessing(inputs, mean=None, variance=None):
    """Standardises `inputs` with statistics fitted on training data, inside the model.

    Keeping the statistics in the model means `best.keras` and its exports take raw
    features, so nobody has to repeat the preprocessing at inference time.

    Args:
        inputs: the model's input tensor.
        mean: per-feature (or per-channel) mean, or `None` to pass inputs through.
        variance: the matching variance.
    """
    if mean is None:
        return inputs
    return keras.layers.Normalization(mean=mean, variance=variance, name="standardize")(inputs)


def regularizer(l1, l2):
    """An L1/L2 weight penalty, or `None` when both factors are zero."""
    if l1 == 0.0 and l2 == 0.0:
        return None
    return keras.regularizers.L1L2(l1=l1, l2=l2)


def hidden_kernel_options(*, initializer, normalization, l1, l2):
    """Arguments of every hidden `Dense`/`Conv2D` layer.

    The bias is dropped before batch normalisation, whose own shift makes it redundant.
    """
    return {
        "use_bias": normalization not in ("batch", "sync_batch"),
        "kernel_initializer": initializer,
        "kernel_regularizer": regularizer(l1, l2),
    }


def normalized_activation(x, *, normalization, activation, dropout, name):
    """Normalisation, then activation, then dropout, after a linear or conv layer.

    Args:
        x: the output of a `Dense` or `Conv2D` layer (without its own activation).
        normalization: `"batch"`, `"sync_batch"` (batch statistics over all replicas of a
            TensorFlow distribution strategy), `"layer"` or `"none"`.
        activation: a Keras activation name.
        dropout: the dropout rate, 0 for none.
        name: prefix of the layer names.
    """
    if normalization in ("batch", "sync_batch"):
        x = keras.layers.BatchNormalization(synchronized=normalization == "sync_batch",
                                            name=f"{name}_bn")(x)
    elif normalization == "layer":
        x = keras.layers.LayerNormalization(name=f"{name}_ln")(x)
    x = keras.layers.Activation(activation, name=f"{name}_act")(x)
    if dropout > 0.0:
        x = keras.layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x
