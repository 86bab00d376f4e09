"""Efficient learning with Keras 3: the `python -m app` command-line application.

Importing `app` never imports Keras, so that `--backend` can choose the Keras backend
before Keras is loaded. The modules that need Keras import it when they run.
"""

__version__ = "0.1.0"
