"""Model builders: MLP and CNN classifiers in teacher and student sizes. All output logits."""

from models.cnn import build_cnn
from models.mlp import build_mlp
from models.presets import SIZES, build_model

__all__ = ["SIZES", "build_cnn", "build_mlp", "build_model"]
