"""Saves the model of the best epoch, where only finite metric values can be best."""

import math

import keras

from callbacks.monitor_mode import check_mode, improves, resolve_mode
from callbacks.training_state import restore, snapshot, to_numpy, write_atomically


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

    A `.keras` save costs 20 to 30 ms even for a small model, which weighs on short epochs.
    With `defer_writing=True` an improvement only copies the model's variables (on their
    devices, as `EarlyStopping(restore_best_weights=True)` does) and the file is written once,
    when training ends, holding exactly what it would have held. A `fit` that raises before
    its end then leaves no new file: `state_dict` carries the copies instead (the training
    state of `fit --resume` holds them).

    Args:
        filepath: where to save, a `.keras` path.
        monitor: the logged metric to compare, e.g. `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"` (`callbacks.monitor_mode.resolve_mode`).
        saved_model: the model to write instead of the trained one, e.g. the student of a
            `keras.distillation.Distiller` (not part of the config: give it again when
            rebuilding).
        start_from_epoch: epochs (0-based) before this one are never kept, as in Keras's
            `EarlyStopping` (e.g. while pruning still removes weights).
        defer_writing: keep the best epoch's variables in memory and write the file at the
            end of training instead of at every improvement.

    Example:

    ```python
    checkpoint = BestModelCheckpoint("best.keras", monitor="val_accuracy")
    model.fit(x, y, validation_split=0.2, epochs=20, callbacks=[checkpoint])
    checkpoint.best_epoch, checkpoint.best_value
    ```
    """

    def __init__(self, filepath, monitor="val_loss", mode="auto", saved_model=None,
                 start_from_epoch=0, defer_writing=False):
        super().__init__()
        self.filepath = str(filepath)
        check_mode(mode)
        self.monitor = monitor
        self.mode = mode
        self.saved_model = saved_model
        self.start_from_epoch = start_from_epoch
        self.defer_writing = defer_writing
        self.unwritten = None  # with `defer_writing`: the best values not yet in the file
        self._unwritten_variables = None  # whose values they are
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
        if self.defer_writing:
            self._unwritten_variables = self._saved_variables()
            self.unwritten = snapshot(self._unwritten_variables)
        else:
            write_atomically(self.filepath, self._saved_model().save)

    def on_train_end(self, logs=None):
        if self.unwritten is None:
            return
        # The variables of that epoch: other callbacks' `on_train_end` may have removed some
        # since (pruning's masks, which the file leaves out).
        variables = self._unwritten_variables
        last = snapshot(variables)
        restore(variables, self.unwritten)
        try:
            write_atomically(self.filepath, self._saved_model().save)
        finally:
            restore(variables, last)
        self.unwritten = self._unwritten_variables = None

    def _saved_model(self):
        return self.model if self.saved_model is None else self.saved_model

    def _saved_variables(self):
        """What `save` writes: the model's variables and its optimizer's."""
        model = self._saved_model()
        optimizer = getattr(model, "optimizer", None)
        built = optimizer is not None and optimizer.built
        return [*model.variables, *(optimizer.variables if built else [])]

    def state_dict(self):
        """The best so far, for resuming, with its variables while they are not yet in the
        file (`defer_writing`)."""
        return {"best_epoch": self.best_epoch, "best_value": self.best_value,
                "unwritten": to_numpy(self.unwritten)}

    def load_state_dict(self, state):
        self.best_epoch, self.best_value = state["best_epoch"], state["best_value"]
        self.unwritten = state.get("unwritten")  # absent from states saved before it existed
        if self.unwritten is not None:  # restored when training begins, as they were saved
            self._unwritten_variables = self._saved_variables()

    def get_config(self):
        return {"filepath": self.filepath, "monitor": self.monitor, "mode": self.mode,
                "start_from_epoch": self.start_from_epoch, "defer_writing": self.defer_writing}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
