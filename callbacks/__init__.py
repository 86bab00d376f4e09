"""Training components that drop into any Keras 3 code, on TensorFlow, JAX and PyTorch.

Every public class is a Keras object (callback, loss, learning-rate schedule, ...) registered
for `.keras` saving.
"""

from callbacks.best_model_checkpoint import BestModelCheckpoint
from callbacks.composite_schedules import SequentialSchedule, Warmup
from callbacks.cosine_annealing import CosineAnnealing, CosineAnnealingWarmRestarts
from callbacks.cyclic_schedules import CyclicLR, OneCycle
from callbacks.early_stopping import EarlyStopping
from callbacks.gradient_accumulation import AccumulationScheduler, GradientAccumulation
from callbacks.gradient_noise_scale import GradientNoiseScale
from callbacks.learning_rate_monitor import LearningRateMonitor
from callbacks.losses import (CategoricalCrossentropy, SparseCategoricalCrossentropy,
                              categorical_crossentropy, sparse_categorical_crossentropy)
from callbacks.lookahead import Lookahead
from callbacks.lr_finder import LRFinder, suggest_learning_rate
from callbacks.magnitude_pruning import (MagnitudePruning, magnitude_masks, model_sparsity,
                                         prunable_weights)
from callbacks.nan_guard import NaNGuard
from callbacks.polynomial_decay import PolynomialDecay
from callbacks.radam import RAdam
from callbacks.reduce_lr_on_plateau import ReduceLROnPlateau, ScaledSchedule
from callbacks.similarity_distillation import SimilarityDistillation, batch_similarity
from callbacks.soft_target_accuracy import SoftTargetAccuracy, soft_target_accuracy
from callbacks.sparsity_schedule import PolynomialSparsity
from callbacks.step_decay import MultiStepDecay, StepDecay

__all__ = [
    "AccumulationScheduler",
    "BestModelCheckpoint",
    "CategoricalCrossentropy",
    "CosineAnnealing",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "EarlyStopping",
    "GradientAccumulation",
    "GradientNoiseScale",
    "LRFinder",
    "LearningRateMonitor",
    "Lookahead",
    "MagnitudePruning",
    "MultiStepDecay",
    "NaNGuard",
    "OneCycle",
    "PolynomialDecay",
    "PolynomialSparsity",
    "RAdam",
    "ReduceLROnPlateau",
    "ScaledSchedule",
    "SequentialSchedule",
    "SimilarityDistillation",
    "SoftTargetAccuracy",
    "SparseCategoricalCrossentropy",
    "StepDecay",
    "Warmup",
    "batch_similarity",
    "categorical_crossentropy",
    "magnitude_masks",
    "model_sparsity",
    "prunable_weights",
    "soft_target_accuracy",
    "sparse_categorical_crossentropy",
    "suggest_learning_rate",
]
