"""What `model.fit` and `model.evaluate` are given. Training always reads `Batches`, a
`keras.utils.PyDataset` whose worker threads read (decode), augment and batch while the
model trains, in an order that depends only on the seed and the epoch (so that a run
resumed in the middle of an epoch reads the very batches it would have); on TensorFlow,
arrays in memory without augmentation are read in its graph in `Batches`' order
(`app.graph_batches`). Evaluation reads in-memory arrays directly, and streamed splits
through `Batches` in order.

A `PyDataset` runs on every backend and needs no TensorFlow, so the JAX-only install
streams image folders too. Threads, not processes: PIL decodes and NumPy copies without the
GIL, and threads share the file list instead of pickling it to each worker.

```python
model.fit(**fit_inputs(dataset, config, augmenter), epochs=10)
model.evaluate(**evaluation_inputs(dataset.x_test, dataset.y_test, config))
```
"""

import math

import keras
import numpy as np

from app.arrays import LazyRows
from app.image_folder import worker_threads

# Batches each worker thread may have ready ahead of the model.
BATCHES_AHEAD_PER_WORKER = 2
# The most features TensorFlow copies to read them in its graph. Beyond it the samples are
# large (images), a step outweighs reading its batch through Python, and a second copy of
# the split would cost more memory than it saves time.
GRAPH_COPY_LIMIT_BYTES = 256 * 2**20


class Batches(keras.utils.PyDataset):
    """Batches of a split, read when a worker asks for them, shuffled and augmented if asked.

    The order and the augmentation of every batch depend only on `seed`, the epoch and the
    batch's index, not on which thread reads it first: a run repeats exactly.

    Args:
        features: the split's features, an array or `app.arrays.LazyRows`.
        labels: the split's integer labels.
        batch_size: samples per batch (the last batch may be smaller).
        seed: the seed of the per-epoch shuffle and of the augmentation, or `None` to keep
            the order (validation and test).
        augmenter: an `app.augmentation.Augmenter`, or `None`.
        workers: reading threads.
        epoch: the epoch whose order to serve first: the `fit`'s `initial_epoch` (Keras may
            start reading before `SetEpoch` is called).
        first_batch: serve the batches from this one on (a run resumed within an epoch).
        part: `(index, count)`: serve only this process's part of every batch, the
            `index`-th of `count` equal slices (`process_part`), so that the processes
            together train on the very batches one process would.

    Example:

    ```python
    model.fit(Batches(x_train, y_train, 64, seed=0, workers=4), epochs=3)
    ```
    """

    def __init__(self, features, labels, batch_size, seed=None, augmenter=None, workers=1,
                 epoch=0, first_batch=0, part=(0, 1)):
        super().__init__(workers=workers, use_multiprocessing=False,
                         max_queue_size=BATCHES_AHEAD_PER_WORKER * workers)
        self.features = features
        self.labels = np.asarray(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.augmenter = augmenter
        self.first_batch = first_batch
        self.part = part
        self.epoch = epoch
        self.order = self._order()

    @property
    def num_batches(self):
        return math.ceil(len(self.labels) / self.batch_size) - self.first_batch

    def __getitem__(self, index):
        index += self.first_batch
        positions = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        features = np.asarray(self.features[positions], dtype=np.float32)
        labels = self.labels[positions]
        if self.augmenter is not None:
            # The whole batch, so that MixUp and CutMix pair it as one process would.
            features, labels = self.augmenter(features, labels, seed=(self.seed, self.epoch, index))
        part, parts = self.part
        share = len(labels) // parts
        return features[part * share:(part + 1) * share], labels[part * share:(part + 1) * share]

    def on_epoch_end(self):
        # Keras calls this once the epoch's workers have stopped, so no batch of the epoch
        # can see the next order.
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch):
        """Shuffles and augments as for `epoch` (like PyTorch's `DistributedSampler`).

        Counting `on_epoch_end` calls is not enough: Keras's first `fit` reads one batch to
        build the model and then ends that pass as an epoch. `SetEpoch` calls this with
        Keras's own epoch number, which also numbers a resumed or second-phase `fit` on.
        """
        if epoch != self.epoch:
            self.epoch = epoch
            self.order = self._order()

    def _order(self):
        if self.seed is None:
            return np.arange(len(self.labels))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.labels))


class SetEpoch(keras.callbacks.Callback):
    """Gives `Batches` Keras's epoch number at the start of every epoch, before any batch of
    it is read.

    Args:
        batches: the training `Batches`.
        order: where TensorFlow reads `batches` in its graph, the `tf.Variable` of their
            order (`app.graph_batches`), given each epoch's order; else `None`.

    Example:

    ```python
    batches = Batches(x_train, y_train, 64, seed=0, augmenter=augmenter)
    model.fit(batches, epochs=10, shuffle=False, callbacks=[SetEpoch(batches)])
    ```
    """

    def __init__(self, batches, order=None):
        super().__init__()
        self.batches = batches
        self.order = order

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
        if self.order is not None:
            # Keras makes the epoch's iterator after this hook: no batch of it reads the old
            # order.
            self.order.assign(self.batches.order)


def fit_inputs(dataset, config, augmenter=None, epoch=0, first_batch=0):
    """`model.fit`'s data arguments for the training and validation splits of `dataset`.

    Args:
        dataset: the `app.data.Dataset`.
        config: the resolved configuration (`training.batch_size`, `seed`, `data.workers`).
        augmenter: an `app.augmentation.Augmenter` for the training batches, or `None`.
        epoch: the first epoch, `fit`'s `initial_epoch`.
        first_batch: start that epoch at this batch (a run resumed within an epoch).

    Returns:
        The arguments; `callbacks` holds the training `Batches`' `SetEpoch` (in-memory
        arrays under TensorFlow's strategies are given as they are).
    """
    batch_size = config.training.batch_size
    if augmenter is None and not dataset.streamed and _splits_only_arrays(config):
        rest = slice(first_batch * batch_size, None)  # as many samples as the epoch has left
        return {"x": dataset.x_train[rest], "y": dataset.y_train[rest],
                "batch_size": batch_size, "validation_data": (dataset.x_val, dataset.y_val)}
    workers = worker_threads(config.data)
    # Slicing an array in memory costs less than handing the batch over from a thread.
    reads = workers if augmenter is not None or dataset.streamed else 1
    part = process_part()
    training = Batches(dataset.x_train, dataset.y_train, batch_size, seed=config.seed,
                       augmenter=augmenter, workers=reads, epoch=epoch,
                       first_batch=first_batch, part=part)
    x, order = training, None
    if _reads_in_graph(training):
        from app.graph_batches import graph_batches

        x, order = graph_batches(training)
    # `shuffle=False`: `Batches` shuffles by its seed; Keras would also reorder its batches.
    inputs = {"x": x, "shuffle": False, "callbacks": [SetEpoch(training, order)]}
    if dataset.streamed or part[1] > 1:
        return {**inputs, "validation_data": Batches(dataset.x_val, dataset.y_val, batch_size,
                                                     workers=workers, part=part)}
    return {**inputs, "validation_data": (dataset.x_val, dataset.y_val),
            "validation_batch_size": batch_size}


def process_part():
    """`(index, count)`: this process among those training one run together (JAX's
    distributed runtime, `app.distribution.join_cluster`), `(0, 1)` alone."""
    if keras.backend.backend() != "jax":
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def _reads_in_graph(batches):
    """Whether TensorFlow reads `batches` in its graph (`app.graph_batches`): arrays in memory,
    without augmentation, in one process, small enough to copy into TensorFlow's memory."""
    return (keras.backend.backend() == "tensorflow" and isinstance(batches.features, np.ndarray)
            and batches.features.nbytes <= GRAPH_COPY_LIMIT_BYTES
            and batches.augmenter is None and batches.part == (0, 1))


def _splits_only_arrays(config):
    """Whether the devices split only arrays' batches over themselves: TensorFlow's
    strategies give each device a whole batch of a `PyDataset` instead (so each step would
    see twice the data), and there Keras's shuffle of the arrays stands in for `Batches`'
    order (a resumed run then sees another order)."""
    return (config.distribution.strategy in ("mirrored", "tpu")
            and keras.backend.backend() == "tensorflow")


def evaluation_inputs(features, labels, config, batch_size=None):
    """`model.evaluate`'s (or `fit`'s, unshuffled) data arguments for a split, in order.

    Args:
        features: the split's features, an array or `app.arrays.LazyRows`.
        labels: its integer labels.
        config: the resolved configuration (`training.batch_size`, `data.workers`).
        batch_size: the batch size, if not `training.batch_size`.
    """
    batch_size = batch_size or config.training.batch_size
    if not isinstance(features, LazyRows):
        return {"x": features, "y": labels, "batch_size": batch_size}
    return {"x": Batches(features, labels, batch_size,
                         workers=worker_threads(config.data))}
