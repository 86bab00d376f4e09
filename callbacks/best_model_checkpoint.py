"""Saves the model of the best epoch, where only finite metric values can be best."""

import math

import keras

from callbacks.monitor_mode import check_mode, improves, resolve_mode
from callbacks.training_state import write_atomically


@keras.saving.register_keras_serializable(package="efficient_learning")
class BestModelCheckpoint(keras.callbacks.Callback):
    """Writes the whole model to `filepath` each time `monitor` reaches a new best.

    Unlike `keras.callbacks.ModelCheckpoint(save_best_only=True)`, a NaN or infinite value
    never counts as best (Keras 3.15 saves a NaN first epoch), so a diverged run keeps its
    last good model or none at all. After training, `best_epoch` (1-based) and `best_value`
    say which epoch was kept. Like Keras's `ModelCheckpoint`, a second `fit` with the same
    callback continues from the best so far (fine-tuning's second phase, `initial_epoch`
    resumes): only a better epoch overwrites the file.

    The file is replaced atomically, and `state_dict` / `load_state_dict` carry the best so far
    into a resumed run (`app.resuming`).

    Args:
        filepath: where to save, a `.keras` path.
        monitor: the logged metric to compare, e.g. `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"` (`callbacks.monitor_mode.resolve_mode`).
        saved_model: the model to write instead of the trained one, e.g. the student of a
            `keras.distillation.Distiller` (not part of the config: give it again when
            rebuilding).
        start_from_epoch: epochs (0-based) before this one are never kept, as in Keras's
            `EarlyStopping` (e.g. while pruning still removes weights).

    Example:

    ```python
    checkpoint = BestModelCheckpoint("best.keras", monitor="val_accuracy")
    model.fit(x, y, validation_split=0.2, epochs=20, callbacks=[checkpoint])
    checkpoint.best_epoch, checkpoint.best_value
    ```
    """

    def __init__(self, filepath, monitor="val_loss", mode="auto", saved_model=None,
                 start_from_epoch=0):
        super().__init__()
        self.filepath = str(filepath)
        check_mode(mode)
        self.monitor = monitor
        self.mode = mode
        self.saved_model = saved_model
        self.start_from_epoch = start_from_epoch
        self.best_epoch = None
        self.best_value = None
        self.direction = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.start_from_epoch:
            return
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"BestModelCheckpoint monitors {self.monitor!r}, which is not "
                           f"logged; logged: {', '.join(sorted(logs or {}))}")
        value = float(value)
        if self.direction is None:  # now that the model's metrics are built
            self.direction = resolve_mode(self.monitor, self.mode, self.model)
        if not math.isfinite(value) or not improves(value, self.best_value, self.direction):
            return
        self.best_epoch, self.best_value = epoch + 1, value
        saved = self.model if self.saved_model is None else self.saved_model
        write_atomically(self.filepath, saved.save)

    def state_dict(self):
        """The best so far, for resuming (the file itself is already on disk)."""
        return {"best_epoch": self.best_epoch, "best_value": self.best_value}

    def load_state_dict(self, state):
        self.best_epoch, self.best_value = state["best_epoch"], state["best_value"]

    def get_config(self):
        return {"filepath": self.filepath, "monitor": self.monitor, "mode": self.mode,
                "start_from_epoch": self.start_from_epoch}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
