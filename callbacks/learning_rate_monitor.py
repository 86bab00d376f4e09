"""Puts the learning rate in use into each epoch's logs, whatever drives it."""

import keras


@keras.saving.register_keras_serializable(package="efficient_learning")
class LearningRateMonitor(keras.callbacks.Callback):
    """Logs the optimizer's learning rate as `learning_rate` at the end of every epoch.

    The value is the one the optimizer applies to the epoch's first update, as PyTorch
    Lightning's `LearningRateMonitor(logging_interval="epoch")` reports it. It works with a
    constant rate, a `LearningRateSchedule` (evaluated at the update count) or a rate that
    another callback changes, so it lands in `History`, `CSVLogger` and `history.csv`. Put it
    before callbacks that read the logs.

    Args:
        log_key: the name under which the rate is logged.

    Example:

    ```python
    history = model.fit(x, y, epochs=3, callbacks=[LearningRateMonitor()])
    history.history["learning_rate"]  # one value per epoch
    ```
    """

    def __init__(self, log_key="learning_rate"):
        super().__init__()
        self.log_key = log_key
        self._epoch_learning_rate = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_learning_rate = current_learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._epoch_learning_rate is not None:
            logs[self.log_key] = self._epoch_learning_rate

    def state_dict(self):
        """The rate at the start of the epoch in progress (a run resumed within an epoch
        logs it, not the rate at the resumption)."""
        return {"epoch_learning_rate": self._epoch_learning_rate}

    def load_state_dict(self, state):
        self._epoch_learning_rate = state["epoch_learning_rate"]

    def get_config(self):
        return {"log_key": self.log_key}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def current_learning_rate(optimizer):
    """The learning rate `optimizer` will apply to its next update, as a Python float."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
