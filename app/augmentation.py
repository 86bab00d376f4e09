"""Training-batch augmentation built from Keras 3's preprocessing layers.

The layers run in the data pipeline (`app.feeding.Batches`), on NumPy batches, never inside
the model: `best.keras` and exported models hold no augmentation, and validation and test
batches are never augmented. Each batch's randomness comes from its own seed (the run's
seed, the epoch and the batch's index), so a run repeats exactly whichever worker thread
reads the batch.

```python
augmenter = build_augmenter(config.augmentation, dataset, seed=42)
images, labels = augmenter(x_batch, y_batch, seed=(42, 0, 7))   # epoch 0, batch 7
```
"""

import threading
import warnings

import numpy as np

from app.errors import UserError

# Operations a RandAugment draws per image (the paper's N = 2).
RANDAUGMENT_OPERATIONS = 2
FLIP_MODES = {"horizontal": "horizontal", "vertical": "vertical",
              "both": "horizontal_and_vertical"}


class Augmenter:
    """Applies per-image layers, Gaussian noise, then MixUp or CutMix, to a batch.

    Args:
        layers: Keras image preprocessing layers applied in order to every image.
        mixers: `keras.layers.MixUp` and/or `CutMix`; each batch takes one of them.
        num_classes: classes of the one-hot targets that mixing needs.
        noise_stddev: the standard deviation of additive Gaussian noise (0 for none).

    Example:

    ```python
    augmenter = Augmenter([keras.layers.RandomFlip("horizontal")], [], num_classes=10)
    images, labels = augmenter(images, labels, seed=(0, 0, 0))
    ```
    """

    def __init__(self, layers, mixers, num_classes, noise_stddev=0.0):
        self.layers = list(layers)
        self.mixers = list(mixers)
        self.num_classes = num_classes
        self.noise_stddev = noise_stddev
        # Keras's layers draw from their own seed generators, which each batch reseeds: every
        # worker thread gets its own copies, so threads augment in parallel without drawing
        # from each other's state.
        self._per_thread = threading.local()

    def __call__(self, images, labels, seed):
        """Augments a batch.

        Args:
            images: float32 `(batch, height, width, channels)`.
            labels: integer labels `(batch,)`.
            seed: a tuple of integers that fixes this batch's randomness.

        Returns:
            `(images, targets)` as NumPy arrays: integer labels, or soft targets
            `(batch, classes)` when mixing.
        """
        import keras
        from keras import ops

        batch_seed = int(np.random.SeedSequence([int(part) for part in seed]).generate_state(1)[0])
        layers, mixers, noise_seeds = self._thread_copies()
        for position, layer in enumerate(layers):
            _reseed(layer, batch_seed, position)
            images = layer(images, training=True)
        if self.noise_stddev:
            _reseed_generator(noise_seeds, batch_seed, len(layers))
            images = images + keras.random.normal(ops.shape(images), stddev=self.noise_stddev,
                                                  seed=noise_seeds)
        if mixers:
            mixer = mixers[np.random.default_rng(batch_seed).integers(len(mixers))]
            _reseed(mixer, batch_seed, len(layers) + 1)
            mixed = mixer({"images": images, "labels": ops.one_hot(labels, self.num_classes)},
                          training=True)
            images, labels = mixed["images"], mixed["labels"]
        return (np.asarray(ops.convert_to_numpy(images), dtype=np.float32),
                np.asarray(ops.convert_to_numpy(labels)))

    def _thread_copies(self):
        """This thread's layers, mixers and noise seed generator (made from the configs)."""
        import keras

        copies = getattr(self._per_thread, "copies", None)
        if copies is None:
            def copy(layer):
                return type(layer).from_config(layer.get_config())

            mixers = [copy(mixer) for mixer in self.mixers]
            for mixer in mixers:
                mixer.backend = _NumPyBetaBackend(mixer.backend)
            copies = ([copy(layer) for layer in self.layers], mixers,
                      keras.random.SeedGenerator(0))
            self._per_thread.copies = copies
        return copies


def build_augmenter(augmentation, dataset, seed):
    """The `Augmenter` that an `augmentation` config section describes, for `dataset`.

    Colour changes work in the training split's value range (`dataset.value_range`), so
    they fit 0–255 photos and 0–16 digits alike.

    Raises:
        UserError: if the data are not images (samples `(height, width, channels)`).
    """
    import keras

    # Harmless warnings from inside Keras's layers, once per batch otherwise: MixUp asks JAX
    # for int64 indices, RandomErasing transposes a 0-D tensor on PyTorch.
    warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")
    warnings.filterwarnings("ignore", message="Tensor.T is deprecated on 0-D tensors")
    if len(dataset.input_shape) != 3:
        raise UserError(f"augmentation needs images (height, width, channels) but "
                        f"{dataset.description} has samples of shape {dataset.input_shape}; "
                        "remove the augmentation section")
    low, high = dataset.value_range
    value_range = (low, high if high > low else low + 1.0)
    layers = keras.layers
    options = [
        (augmentation.flip != "none",
         lambda: layers.RandomFlip(FLIP_MODES.get(augmentation.flip), seed=seed)),
        (augmentation.rotation, lambda: layers.RandomRotation(augmentation.rotation, seed=seed)),
        (augmentation.translation, lambda: layers.RandomTranslation(
            augmentation.translation, augmentation.translation, seed=seed)),
        (augmentation.zoom, lambda: layers.RandomZoom(augmentation.zoom, seed=seed)),
        (augmentation.contrast, lambda: layers.RandomContrast(
            augmentation.contrast, value_range=value_range, seed=seed)),
        (augmentation.brightness, lambda: layers.RandomBrightness(
            augmentation.brightness, value_range=value_range, seed=seed)),
        (augmentation.randaugment, lambda: layers.RandAugment(
            value_range=value_range, num_ops=RANDAUGMENT_OPERATIONS,
            factor=augmentation.randaugment, seed=seed)),
        (augmentation.erasing, lambda: layers.RandomErasing(
            augmentation.erasing, value_range=value_range, seed=seed)),
    ]
    mixers = []
    if augmentation.mixup:
        mixers.append(layers.MixUp(alpha=augmentation.mixup, seed=seed))
    if augmentation.cutmix:
        mixers.append(layers.CutMix(factor=(augmentation.cutmix, augmentation.cutmix), seed=seed))
    return Augmenter([build() for wanted, build in options if wanted], mixers,
                     dataset.num_classes, noise_stddev=augmentation.noise * (value_range[1]
                                                                             - value_range[0]))


def _reseed(layer, batch_seed, position):
    for sublayer in layer._flatten_layers(include_self=True):
        generator = getattr(sublayer, "generator", None)
        if generator is not None:
            _reseed_generator(generator, batch_seed, position)


def _reseed_generator(generator, batch_seed, position):
    state = generator.state
    generator.state.assign(np.array([batch_seed % 2**31, position], dtype=state.dtype))


class _NumPyBetaBackend:
    """A preprocessing layer's backend whose `random.beta` draws with NumPy.

    Keras's PyTorch `beta` (MixUp's and CutMix's weights) seeds torch's global generator and
    restores it after the draw. Reading threads doing that race with the training thread, whose
    dropout draws from that generator, and with a resumed run setting it. The weights come from
    NumPy instead, on every backend, seeded by the layer's seed generator like its other draws.
    """

    def __init__(self, backend):
        self._layer_backend = backend
        self.random = _NumPyBetaRandom(backend)

    def __getattr__(self, name):  # everything but `random`
        return getattr(self._layer_backend, name)


class _NumPyBetaRandom:
    """The backend's `random` module with `beta` drawn by NumPy (see `_NumPyBetaBackend`)."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend.random, name)

    def beta(self, shape, alpha, beta, dtype=None, seed=None):
        import keras

        seed = self._backend.convert_to_numpy(seed.next() if hasattr(seed, "next") else seed)
        rng = np.random.default_rng([int(part) % 2**32 for part in np.ravel(seed)])
        return self._backend.convert_to_tensor(rng.beta(alpha, beta, size=shape),
                                               dtype=dtype or keras.config.floatx())
