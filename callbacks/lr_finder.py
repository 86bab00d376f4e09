"""The learning-rate range test: sweep the rate exponentially, watch the loss, suggest a rate."""

import math

import keras
import numpy as np

from callbacks.schedule_math import learning_rate_schedule
from callbacks.training_state import restore, snapshot, sync_jax_state

SUGGESTION_RULES = ("valley", "steepest", "minimum")


@keras.saving.register_keras_serializable(package="efficient_learning")
class LRFinder(keras.callbacks.Callback):
    """Sweeps the learning rate from `min_lr` to `max_lr` and suggests one (Smith, 2017).

    Each batch of `fit` runs at the next rate of an exponential sweep over `num_steps`
    updates. The loss of each batch is smoothed (exponential moving average with bias
    correction, `beta=smoothing`, as fastai); the sweep stops early once the smoothed loss
    exceeds `divergence_threshold` times its minimum or is not finite. Afterwards the
    model's weights and the optimizer's state (slots, iteration count, learning rate) are
    restored, so the model is as it was before `fit`. The rates and losses are in
    `learning_rates`, `losses` and `smoothed_losses`; the suggestion is in `suggestion`.

    Suggestion rules (all on the smoothed curve, see `suggest_learning_rate`):
    `"valley"` (fastai's; the default, closest to the best fixed rate on the project's
    benchmark), `"steepest"` (PyTorch Lightning's; higher, a peak for warm-up + annealing)
    and `"minimum"`
    (the rate at the lowest loss, divided by 10).

    The model must be compiled with a constant learning rate. Give `fit` at least
    `num_steps` batches of equal size (the batch loss is recovered from Keras's running
    mean of the epoch, which weights batches by size).

    Args:
        min_lr: the first learning rate of the sweep.
        max_lr: the last learning rate of the sweep.
        num_steps: the number of updates of the sweep.
        smoothing: the moving-average factor of the loss, in [0, 1).
        divergence_threshold: stop when the smoothed loss exceeds this times its minimum.
        suggestion: the rule for `suggestion`: `"valley"`, `"steepest"` or `"minimum"`.

    Example:

    ```python
    finder = LRFinder(min_lr=1e-6, max_lr=1.0, num_steps=100)
    model.fit(x, y, batch_size=64, epochs=1, callbacks=[finder])
    finder.suggestion        # e.g. 0.0011
    finder.plot("lr_find.png")
    ```
    """

    def __init__(self, min_lr=1e-7, max_lr=10.0, num_steps=100, smoothing=0.98,
                 divergence_threshold=4.0, suggestion="valley"):
        super().__init__()
        if not 0 < min_lr < max_lr:
            raise ValueError(f"need 0 < min_lr < max_lr; got {min_lr!r} and {max_lr!r}")
        if num_steps < 5:
            raise ValueError(f"num_steps must be >= 5; got {num_steps!r}")
        if not 0 <= smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1); got {smoothing!r}")
        if suggestion not in SUGGESTION_RULES:
            raise ValueError(f"suggestion must be one of {', '.join(SUGGESTION_RULES)}; "
                             f"got {suggestion!r}")
        self.min_lr = min_lr
        self.max_lr = max_lr
        self.num_steps = num_steps
        self.smoothing = smoothing
        self.divergence_threshold = divergence_threshold
        self.suggestion_rule = suggestion
        self._reset()

    def _reset(self):
        self.learning_rates, self.losses, self.smoothed_losses = [], [], []
        self.suggestion = None
        self.stopped_on_divergence = False
        self._average = 0.0
        self._epoch_mean, self._epoch_batches = 0.0, 0
        self._saved_weights = self._saved_optimizer_state = None

    def sweep_rate(self, step):
        """The learning rate of sweep step `step` (0-based)."""
        return self.min_lr * (self.max_lr / self.min_lr) ** (step / (self.num_steps - 1))

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        if learning_rate_schedule(optimizer) is not None:
            raise ValueError("LRFinder needs an optimizer with a constant learning rate; "
                             "compile with e.g. Adam(1e-3) for the sweep")
        self._reset()
        if not optimizer.built:
            # TensorFlow builds it in the first step: its moments would not be restored.
            optimizer.build(self.model.trainable_variables)
        self._saved_weights = snapshot(self.model.variables)
        self._saved_optimizer_state = snapshot(optimizer.variables)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_mean, self._epoch_batches = 0.0, 0

    def on_train_batch_begin(self, batch, logs=None):
        sync_jax_state(self.model)  # so that the assignment below is what the next step reads
        self.model.optimizer.learning_rate = self.sweep_rate(len(self.learning_rates))

    def on_train_batch_end(self, batch, logs=None):
        running_mean = float(logs["loss"])
        # Keras logs the mean over the epoch so far; recover this batch's loss from it.
        self._epoch_batches += 1
        loss = self._epoch_batches * running_mean - (self._epoch_batches - 1) * self._epoch_mean
        self._epoch_mean = running_mean
        self._record(self.sweep_rate(len(self.learning_rates)), loss)
        if len(self.learning_rates) >= self.num_steps or self.stopped_on_divergence:
            self.model.stop_training = True

    def _record(self, learning_rate, loss):
        step = len(self.losses)
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        smoothed = self._average / (1 - self.smoothing ** (step + 1))
        self.learning_rates.append(learning_rate)
        self.losses.append(loss)
        self.smoothed_losses.append(smoothed)
        if not math.isfinite(smoothed) or smoothed > self.divergence_threshold * min(
                self.smoothed_losses):
            self.stopped_on_divergence = True

    def on_train_end(self, logs=None):
        restore(self.model.variables, self._saved_weights)
        restore(self.model.optimizer.variables, self._saved_optimizer_state)
        self.suggestion = suggest_learning_rate(self.learning_rates, self.smoothed_losses,
                                                self.suggestion_rule)

    def suggestions(self):
        """The suggestion of every rule, as `{rule: learning rate or None}`."""
        return {rule: suggest_learning_rate(self.learning_rates, self.smoothed_losses, rule)
                for rule in SUGGESTION_RULES}

    def plot(self, path, title="Learning-rate range test"):
        """Writes the loss against the learning rate (log axis) as a PNG, suggestion marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot(self.learning_rates, self.losses, alpha=0.3, label="batch loss")
        axis.plot(self.learning_rates, self.smoothed_losses, label="smoothed loss")
        if self.suggestion is not None:
            axis.axvline(self.suggestion, color="tab:red", linestyle="--",
                         label=f"suggestion ({self.suggestion_rule}): {self.suggestion:.2e}")
        finite = [loss for loss in self.losses + self.smoothed_losses if math.isfinite(loss)]
        if finite:  # keep the divergence from flattening the interesting part
            low, start = min(finite), self.smoothed_losses[0]
            axis.set_ylim(low - 0.05 * abs(low), 1.5 * start + 1e-12)
        axis.set_xscale("log")
        axis.set_xlabel("learning rate")
        axis.set_ylabel("loss")
        axis.set_title(title)
        axis.grid(alpha=0.3, which="both")
        axis.legend()
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)

    def get_config(self):
        return {"min_lr": self.min_lr, "max_lr": self.max_lr, "num_steps": self.num_steps,
                "smoothing": self.smoothing, "divergence_threshold": self.divergence_threshold,
                "suggestion": self.suggestion_rule}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def suggest_learning_rate(learning_rates, losses, rule="valley"):
    """A learning rate read off a range test's (smoothed) loss curve; `None` if too short.

    Rules, on the finite part of the curve:

    - `"valley"` (fastai's `valley`): the longest stretch over which the loss keeps
      decreasing, and the rate about half-way down it (fastai's index arithmetic).
    - `"steepest"` (PyTorch Lightning's): the rate where the loss falls fastest per step,
      ignoring the first 10 and the last point.
    - `"minimum"` (fastai's `minimum`): the rate at the lowest loss, divided by 10.

    Args:
        learning_rates: the rates of the sweep, increasing.
        losses: the smoothed loss at each rate.
        rule: `"valley"`, `"steepest"` or `"minimum"`.
    """
    rates = np.asarray(learning_rates, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(losses)
    if not finite.all():
        end = int(np.argmin(finite))
        rates, losses = rates[:end], losses[:end]
    if len(losses) < 3:
        return None
    if rule == "minimum":
        return float(rates[int(np.argmin(losses))] / 10)
    if rule == "steepest":
        skip_begin, skip_end = (10, 1) if len(losses) > 12 else (0, 0)
        gradient = np.gradient(losses[skip_begin:len(losses) - skip_end])
        return float(rates[skip_begin + int(np.argmin(gradient))])
    if rule == "valley":
        return float(rates[_valley_index(losses)])
    raise ValueError(f"rule must be one of {', '.join(SUGGESTION_RULES)}; got {rule!r}")


def _valley_index(losses):
    # fastai's valley: the longest decreasing subsequence ending at each point, O(n²).
    longest = np.ones(len(losses), dtype=int)
    best_start = best_end = 0
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[best_end] < longest[i]:
                best_end = i
                best_start = best_end - longest[best_end]
    sections = (best_end - best_start) / 3
    return best_start + int(sections) + int(sections / 2)
