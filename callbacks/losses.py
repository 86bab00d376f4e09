"""Cross-entropy with label smoothing done right on any class axis.

Keras 3.15 has no `label_smoothing` for integer labels, and its one-hot
`CategoricalCrossentropy` divides the smoothing by the size of the last axis even when `axis`
names another one. Both losses here equal PyTorch's `cross_entropy(label_smoothing=ε)`.
"""

import keras
from keras import ops


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0,
                                    axis=-1):
    """Per-sample cross-entropy between integer labels and predictions, with smoothing.

    With smoothing ε over K classes the target is `(1 − ε)·one_hot(y) + ε/K`, so the loss is
    `(1 − ε)·(−log p_y) + ε·mean_k(−log p_k)`: the same as PyTorch's
    `cross_entropy(logits, y, label_smoothing=ε)`. Soft targets (one probability per class,
    as MixUp and CutMix make) are taken too, as `categorical_crossentropy` takes them, so a
    model trained on mixed batches validates on integer labels with the same loss.

    Args:
        y_true: integer class indices, shape `(batch,)` or `(batch, 1)`, or soft targets
            shaped like `y_pred`.
        y_pred: logits or probabilities with the classes on `axis`.
        from_logits: whether `y_pred` holds logits.
        label_smoothing: ε in [0, 1).
        axis: the class axis of `y_pred`.

    Returns:
        The loss of each sample.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape):
        if y_true.shape[axis] not in (1, None):
            return categorical_crossentropy(y_true, y_pred, from_logits, label_smoothing, axis)
        y_true = ops.squeeze(y_true, axis=axis)
    y_true = ops.cast(y_true, "int32")
    log_probs = _log_probabilities(y_pred, from_logits, axis)
    one_hot = ops.one_hot(y_true, ops.shape(y_pred)[axis], axis=axis, dtype=log_probs.dtype)
    negative_log_likelihood = -ops.sum(one_hot * log_probs, axis=axis)
    if not label_smoothing:
        return negative_log_likelihood
    uniform_cross_entropy = -ops.mean(log_probs, axis=axis)
    return (1.0 - label_smoothing) * negative_log_likelihood + label_smoothing * uniform_cross_entropy


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    """Per-sample cross-entropy between one-hot (or soft) targets and predictions.

    Smoothing replaces the target by `(1 − ε)·y + ε/K`, where K is the size of the class
    `axis` (Keras 3.15 uses the last axis's size whatever `axis` says), as PyTorch's
    `cross_entropy(logits, target_probabilities, label_smoothing=ε)`.

    Args:
        y_true: targets with the classes on `axis`.
        y_pred: logits or probabilities with the classes on `axis`.
        from_logits: whether `y_pred` holds logits.
        label_smoothing: ε in [0, 1).
        axis: the class axis of both tensors.

    Returns:
        The loss of each sample (the class axis reduced).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    log_probs = _log_probabilities(y_pred, from_logits, axis)
    y_true = ops.cast(ops.convert_to_tensor(y_true), log_probs.dtype)
    if label_smoothing:
        classes = ops.shape(y_pred)[axis]
        y_true = y_true * (1.0 - label_smoothing) + label_smoothing / classes
    return -ops.sum(y_true * log_probs, axis=axis)


def _log_probabilities(y_pred, from_logits, axis):
    if from_logits:
        return ops.log_softmax(y_pred, axis=axis)
    # Same as Keras: renormalise, then clip away from 0 and 1 before the log.
    epsilon = keras.config.epsilon()
    probs = y_pred / ops.sum(y_pred, axis=axis, keepdims=True)
    return ops.log(ops.clip(probs, epsilon, 1.0 - epsilon))


class _SmoothedCrossentropy(keras.losses.Loss):
    """The shared constructor, `call` and `get_config` of the two losses below."""

    function = None

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name=None, dtype=None):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing
        self.axis = axis

    def call(self, y_true, y_pred):
        return type(self).function(y_true, y_pred, from_logits=self.from_logits,
                                   label_smoothing=self.label_smoothing, axis=self.axis)

    def get_config(self):
        config = super().get_config()
        config.update(from_logits=self.from_logits, label_smoothing=self.label_smoothing,
                      axis=self.axis)
        return config


@keras.saving.register_keras_serializable(package="efficient_learning")
class CategoricalCrossentropy(_SmoothedCrossentropy):
    """`keras.losses.CategoricalCrossentropy` whose smoothing counts the classes on `axis`.

    Args:
        from_logits: whether predictions are logits.
        label_smoothing: ε in [0, 1); 0 is plain cross-entropy.
        axis: the class axis.
        reduction: as in `keras.losses.Loss`.
        name: the loss's name.
        dtype: the loss's dtype.

    Example:

    ```python
    # Segmentation logits (batch, classes, height, width), one-hot targets alike:
    loss = CategoricalCrossentropy(from_logits=True, label_smoothing=0.1, axis=1)
    ```
    """

    function = staticmethod(categorical_crossentropy)

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="categorical_crossentropy", dtype=None):
        super().__init__(from_logits, label_smoothing, axis, reduction, name, dtype)


@keras.saving.register_keras_serializable(package="efficient_learning")
class SparseCategoricalCrossentropy(_SmoothedCrossentropy):
    """`keras.losses.SparseCategoricalCrossentropy` with `label_smoothing`.

    Args:
        from_logits: whether predictions are logits.
        label_smoothing: ε in [0, 1); 0 is plain cross-entropy.
        axis: the class axis.
        reduction: as in `keras.losses.Loss`.
        name: the loss's name.
        dtype: the loss's dtype.

    Example:

    ```python
    loss = SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    ```
    """

    function = staticmethod(sparse_categorical_crossentropy)

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="sparse_categorical_crossentropy",
                 dtype=None):
        super().__init__(from_logits, label_smoothing, axis, reduction, name, dtype)
