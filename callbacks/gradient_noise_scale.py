"""The gradient noise scale: the batch size beyond which larger batches stop paying off."""

import keras
import numpy as np

from callbacks.gradients import loss_and_gradients


@keras.saving.register_keras_serializable(package="efficient_learning")
class GradientNoiseScale(keras.callbacks.Callback):
    """Estimates the simple noise scale B = tr(Σ)/|G|² and logs it after every epoch.

    Σ is the per-example covariance of the gradient and G the true gradient (McCandlish et
    al., "An Empirical Model of Large-Batch Training", 2018, appendix A): batches much smaller
    than B waste updates on noise, much larger ones waste samples. From the squared norms of
    gradients at two batch sizes b < B_big,

        |G|² ≈ (B_big·|G_big|² − b·|G_b|²) / (B_big − b)
        tr(Σ) ≈ (|G_b|² − |G_big|²) / (1/b − 1/B_big),

    both unbiased; the ratio of their exponential moving averages (`smoothing`) is logged, as
    the paper recommends, because each estimate alone is noisy. `|G_b|²` is averaged over
    every small batch of the big one.

    Args:
        data: `(x, y)`, training samples to estimate on; the big batch is all of them.
        small_batch_size: b.
        smoothing: the moving-average factor of the two estimates (0: none).
        log_key: the name under which the noise scale is logged.

    Example:

    ```python
    noise = GradientNoiseScale((x_train[:2048], y_train[:2048]), small_batch_size=32)
    model.fit(x_train, y_train, epochs=10, callbacks=[noise])
    history.history["noise_scale"]   # e.g. grows as the loss falls
    ```
    """

    def __init__(self, data, small_batch_size=32, smoothing=0.9, log_key="noise_scale"):
        super().__init__()
        x, y = data
        if len(x) < 2 * small_batch_size:
            raise ValueError(f"data needs at least 2 × small_batch_size = {2 * small_batch_size} "
                             f"samples; got {len(x)}")
        self.data = (x, y)
        self.small_batch_size = small_batch_size
        self.smoothing = smoothing
        self.log_key = log_key
        self._average_gradient_norm = self._average_trace = None

    def on_train_begin(self, logs=None):
        self._average_gradient_norm = self._average_trace = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.log_key] = self.update()

    def estimate(self):
        """One unsmoothed estimate `(|G|², tr(Σ))` at the model's current weights."""
        x, y = self.data
        small = self.small_batch_size
        big = (len(x) // small) * small
        squared_norms = [
            _squared_norm(loss_and_gradients(self.model, x[i:i + small], y[i:i + small],
                                              training=False)[1])
            for i in range(0, big, small)
        ]
        small_norm = float(np.mean(squared_norms))
        big_norm = _squared_norm(loss_and_gradients(self.model, x[:big], y[:big],
                                                    training=False)[1])
        gradient_norm = (big * big_norm - small * small_norm) / (big - small)
        trace = (small_norm - big_norm) / (1 / small - 1 / big)
        return gradient_norm, trace

    def update(self):
        """Adds one estimate to the moving averages; returns the smoothed noise scale."""
        gradient_norm, trace = self.estimate()
        if self._average_gradient_norm is None:
            self._average_gradient_norm, self._average_trace = gradient_norm, trace
        else:
            keep = self.smoothing
            self._average_gradient_norm = keep * self._average_gradient_norm + (1 - keep) * gradient_norm
            self._average_trace = keep * self._average_trace + (1 - keep) * trace
        return self._average_trace / max(self._average_gradient_norm, 1e-30)

    def state_dict(self):
        """The moving averages, for resuming."""
        return {"average_gradient_norm": self._average_gradient_norm,
                "average_trace": self._average_trace}

    def load_state_dict(self, state):
        self._average_gradient_norm = state["average_gradient_norm"]
        self._average_trace = state["average_trace"]

    def get_config(self):
        # The data is not part of the configuration: give it again when rebuilding.
        return {"small_batch_size": self.small_batch_size, "smoothing": self.smoothing,
                "log_key": self.log_key}


def _squared_norm(gradients):
    return float(sum(np.sum(np.square(g, dtype=np.float64)) for g in gradients if g is not None))
