"""Training components that drop into any Keras 3 code, on TensorFlow, JAX and PyTorch.

Every public class is a Keras object (callback, loss, ...) registered for `.keras` saving.
"""

from callbacks.best_model_checkpoint import BestModelCheckpoint
from callbacks.learning_rate_monitor import LearningRateMonitor
from callbacks.losses import SparseCategoricalCrossentropy, sparse_categorical_crossentropy

__all__ = [
    "BestModelCheckpoint",
    "LearningRateMonitor",
    "SparseCategoricalCrossentropy",
    "sparse_categorical_crossentropy",
]
