"""On TensorFlow, the training `Batches` of arrays in memory, read inside TensorFlow's graph.

Keras reads a `PyDataset` on TensorFlow through `tf.data.Dataset.from_generator`, a call
into Python for every batch: on the default model that made an epoch 4 to 20 % slower than
`fit` on the arrays themselves (`bench/callback_overhead.py`, the feeding against bare `fit`).
Where the features sit in memory and need no augmentation, a `tf.data` pipeline gathers each
batch's rows instead, in the order `Batches` gives the epoch. That order lives in a variable,
which `SetEpochInGraph` updates as each epoch begins. The batches and their order are those of
`Batches`, so a resumed run still reads what the uninterrupted one read, and with several
steps per call Keras runs them all without coming back to Python.

```python
batches = Batches(x_train, y_train, 64, seed=0)
dataset, set_epoch = graph_batches(batches)
model.fit(dataset, epochs=10, callbacks=[set_epoch])   # the batches `Batches` would give
```
"""

import keras


class SetEpochInGraph(keras.callbacks.Callback):
    """`app.feeding.SetEpoch` for `graph_batches`: gives `Batches` Keras's epoch number as
    each epoch begins, and the pipeline's variable the epoch's order.

    Args:
        batches: the training `Batches`.
        order: the `tf.Variable` the pipeline reads the order from.
    """

    def __init__(self, batches, order):
        super().__init__()
        self.batches = batches
        self.order = order

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
        # Keras makes the epoch's iterator after this hook: no batch of it reads the old order.
        self.order.assign(self.batches.order)


def graph_batches(batches):
    """A `tf.data.Dataset` of the batches `batches` serves, and the callback that keeps its
    order per epoch.

    Args:
        batches: `app.feeding.Batches` of in-memory NumPy features, without an augmenter,
            in one process.

    Returns:
        `(dataset, callback)`: pass both to `model.fit` (the callback keeps the epoch's
        order, as `SetEpoch` does for `Batches`).
    """
    import tensorflow as tf

    features = tf.constant(batches.features)
    labels = tf.constant(batches.labels)
    order = tf.Variable(batches.order, trainable=False)
    size, samples = batches.batch_size, len(batches.labels)

    def read(index):
        rows = order[index * size:tf.minimum((index + 1) * size, samples)]
        return tf.cast(tf.gather(features, rows), tf.float32), tf.gather(labels, rows)

    total = -(-samples // size)
    dataset = tf.data.Dataset.range(batches.first_batch, total).map(read)
    return dataset.prefetch(tf.data.AUTOTUNE), SetEpochInGraph(batches, order)
