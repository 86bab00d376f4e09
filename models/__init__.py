"""Model builders: MLP and CNN classifiers. All output logits.

The application picks a builder and its size preset from `app.tables.architectures`.
"""

from models.cnn import build_cnn
from models.mlp import build_mlp

__all__ = ["build_cnn", "build_mlp"]
