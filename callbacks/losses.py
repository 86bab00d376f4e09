"""Cross-entropy for integer labels with label smoothing, which Keras 3.15 lacks."""

import keras
from keras import ops


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0,
                                    axis=-1):
    """Per-sample cross-entropy between integer labels and predictions, with smoothing.

    With smoothing ε over K classes the target is `(1 − ε)·one_hot(y) + ε/K`, so the loss is
    `(1 − ε)·(−log p_y) + ε·mean_k(−log p_k)`: the same as PyTorch's
    `cross_entropy(logits, y, label_smoothing=ε)`.

    Args:
        y_true: integer class indices, shape `(batch,)` or `(batch, 1)`.
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
        y_true = ops.squeeze(y_true, axis=axis)
    y_true = ops.cast(y_true, "int32")
    if from_logits:
        log_probs = ops.log_softmax(y_pred, axis=axis)
    else:
        # Same as Keras: renormalise, then clip away from 0 and 1 before the log.
        epsilon = keras.config.epsilon()
        probs = y_pred / ops.sum(y_pred, axis=axis, keepdims=True)
        log_probs = ops.log(ops.clip(probs, epsilon, 1.0 - epsilon))
    one_hot = ops.one_hot(y_true, ops.shape(y_pred)[axis], axis=axis, dtype=log_probs.dtype)
    negative_log_likelihood = -ops.sum(one_hot * log_probs, axis=axis)
    if not label_smoothing:
        return negative_log_likelihood
    uniform_cross_entropy = -ops.mean(log_probs, axis=axis)
    return (1.0 - label_smoothing) * negative_log_likelihood + label_smoothing * uniform_cross_entropy


@keras.saving.register_keras_serializable(package="efficient_learning")
class SparseCategoricalCrossentropy(keras.losses.Loss):
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

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name="sparse_categorical_crossentropy",
                 dtype=None):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = from_logits
        self.label_smoothing = label_smoothing
        self.axis = axis

    def call(self, y_true, y_pred):
        return sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=self.from_logits,
            label_smoothing=self.label_smoothing, axis=self.axis,
        )

    def get_config(self):
        config = super().get_config()
        config.update(from_logits=self.from_logits, label_smoothing=self.label_smoothing,
                      axis=self.axis)
        return config
