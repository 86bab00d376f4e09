"""On TensorFlow, the training `Batches` of arrays in memory, read inside TensorFlow's graph.

Keras reads a `PyDataset` on TensorFlow through `tf.data.Dataset.from_generator`, a call
into Python for every batch: on the default model that made an epoch 4 to 20 % slower than
`fit` on the arrays themselves (`bench/callback_overhead.py`, the feeding against bare `fit`).
Where the features sit in memory and need no augmentation, a `tf.data` pipeline gathers each
batch's rows instead, in the order `Batches` gives the epoch. That order lives in a variable,
which `app.feeding.SetEpoch` updates as each epoch begins. The batches and their order are
those of `Batches`, so a resumed run still reads what the uninterrupted one read, and with
several steps per call Keras runs them all without coming back to Python.

```python
batches = Batches(x_train, y_train, 64, seed=0)
dataset, order = graph_batches(batches)
model.fit(dataset, epochs=10, callbacks=[SetEpoch(batches, order)])   # as `Batches` gives
```
"""


def graph_batches(batches):
    """A `tf.data.Dataset` of the batches `batches` serves, and the variable it reads their
    order from.

    Args:
        batches: `app.feeding.Batches` of in-memory NumPy features, without an augmenter,
            in one process.

    Returns:
        `(dataset, order)`: pass the dataset to `model.fit` with `SetEpoch(batches, order)`,
        which hands the variable each epoch's order.
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
    return dataset.prefetch(tf.data.AUTOTUNE), order
