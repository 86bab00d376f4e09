"""A small convolutional classifier for images."""

import keras

from models.blocks import hidden_kernel_options, normalized_activation, preprocessing, regularizer


def build_cnn(input_shape, num_classes, *, filters=32, depth=2, width=128, activation="relu",
              initializer="he_normal", normalization="batch", dropout=0.0, l1=0.0, l2=0.0,
              mean=None, variance=None, name="cnn"):
    """Builds a CNN: `depth` blocks of 3×3 convolution and 2×2 max pooling, then a dense head.

    Each block doubles the filters; pooling stops once the feature map is 1 pixel wide, so
    the same builder serves 8×8 digits and larger images.

    Args:
        input_shape: `(height, width, channels)` of one image.
        num_classes: number of output logits.
        filters: filters of the first convolution block.
        depth: number of convolution blocks.
        width: units of the dense layer before the logits.
        activation: hidden activation (a Keras activation name).
        initializer: kernel initializer name.
        normalization: `"batch"`, `"sync_batch"`, `"layer"` or `"none"` after each layer.
        dropout: dropout rate after the dense layer.
        l1: L1 penalty on every kernel.
        l2: L2 penalty on every kernel.
        mean: training-set per-channel mean to standardise inputs with, or `None`.
        variance: training-set per-channel variance, with `mean`.
        name: the model's name.

    Returns:
        A functional `keras.Model` mapping raw images to logits.

    Example:

    ```python
    model = build_cnn((28, 28, 1), 10, filters=16, depth=2, width=64)
    ```
    """
    if len(input_shape) != 3:
        raise ValueError(f"build_cnn needs images of shape (height, width, channels); "
                         f"got samples of shape {tuple(input_shape)}")
    inputs = keras.Input(shape=input_shape, name="input")
    x = preprocessing(inputs, mean, variance)
    kernel = hidden_kernel_options(initializer=initializer, normalization=normalization, l1=l1, l2=l2)
    spatial = min(input_shape[:2])
    for index in range(depth):
        x = keras.layers.Conv2D(filters * 2**index, 3, padding="same", name=f"conv_{index}",
                                **kernel)(x)
        x = normalized_activation(x, normalization=normalization, activation=activation,
                                  dropout=0.0, name=f"conv_{index}")
        if spatial >= 2:
            x = keras.layers.MaxPooling2D(2, name=f"pool_{index}")(x)
            spatial //= 2
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(width, name="dense", **kernel)(x)
    x = normalized_activation(x, normalization=normalization, activation=activation,
                              dropout=dropout, name="dense")
    logits = keras.layers.Dense(num_classes, kernel_initializer="glorot_uniform",
                                kernel_regularizer=regularizer(l1, l2), name="logits")(x)
    return keras.Model(inputs, logits, name=name)
