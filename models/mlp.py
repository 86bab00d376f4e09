"""A multi-layer perceptron classifier."""

import keras

from models.blocks import hidden_kernel_options, normalized_activation, preprocessing, regularizer


def build_mlp(input_shape, num_classes, *, width=256, depth=2, activation="relu",
              initializer="he_normal", normalization="batch", dropout=0.0, l1=0.0, l2=0.0,
              mean=None, variance=None, name="mlp"):
    """Builds an MLP that flattens its input and outputs class logits.

    Args:
        input_shape: shape of one sample, e.g. `(64,)` or `(8, 8, 1)`.
        num_classes: number of output logits.
        width: units of each hidden layer.
        depth: number of hidden layers.
        activation: hidden activation (a Keras activation name).
        initializer: kernel initializer name, e.g. `"he_normal"` or `"glorot_uniform"`.
        normalization: `"batch"`, `"sync_batch"`, `"layer"` or `"none"` after each hidden layer.
        dropout: dropout rate after each hidden layer.
        l1: L1 penalty on every kernel.
        l2: L2 penalty on every kernel.
        mean: training-set feature mean to standardise inputs with, or `None`.
        variance: training-set feature variance, with `mean`.
        name: the model's name.

    Returns:
        A functional `keras.Model` mapping raw features to logits.

    Example:

    ```python
    model = build_mlp((64,), 10, width=128, depth=2, dropout=0.1)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```
    """
    inputs = keras.Input(shape=input_shape, name="input")
    x = preprocessing(inputs, mean, variance)
    if len(input_shape) > 1:
        x = keras.layers.Flatten(name="flatten")(x)
    kernel = hidden_kernel_options(initializer=initializer, normalization=normalization, l1=l1, l2=l2)
    for index in range(depth):
        x = keras.layers.Dense(width, name=f"dense_{index}", **kernel)(x)
        x = normalized_activation(x, normalization=normalization, activation=activation,
                                  dropout=dropout, name=f"dense_{index}")
    logits = keras.layers.Dense(num_classes, kernel_initializer="glorot_uniform",
                                kernel_regularizer=regularizer(l1, l2), name="logits")(x)
    return keras.Model(inputs, logits, name=name)
