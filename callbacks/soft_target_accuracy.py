"""Accuracy against integer labels or soft targets, for training on mixed batches."""

import keras
from keras import ops


def soft_target_accuracy(y_true, y_pred):
    """1 where the predicted class is the label, or the most probable class of soft targets.

    Args:
        y_true: integer labels `(batch,)` or `(batch, 1)`, or targets `(batch, classes)`.
        y_pred: logits or probabilities `(batch, classes)`.

    Returns:
        A float `(batch,)` of 0s and 1s.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] not in (1, None):
        labels = ops.argmax(y_true, axis=-1)
    else:
        labels = ops.reshape(y_true, (-1,))
    predicted = ops.argmax(y_pred, axis=-1)
    return ops.cast(ops.equal(ops.cast(labels, "int32"), ops.cast(predicted, "int32")),
                    "float32")


@keras.saving.register_keras_serializable(package="efficient_learning")
class SoftTargetAccuracy(keras.metrics.MeanMetricWrapper):
    """`SparseCategoricalAccuracy` that also takes soft targets (MixUp, CutMix).

    On a mixed training batch a sample counts as right when the model predicts the class
    that contributes most to its target; validation batches keep their integer labels.

    Args:
        name: the metric's name.
        dtype: the metric's dtype.

    Example:

    ```python
    model.compile(optimizer="adam", loss=SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[SoftTargetAccuracy(name="accuracy")])
    ```
    """

    def __init__(self, name="soft_target_accuracy", dtype=None):
        super().__init__(fn=soft_target_accuracy, name=name, dtype=dtype)
        self._direction = "up"

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}
