"""Training on several devices: `distribution.strategy` checked against the backend, and the
scope that the model, its optimizer and metrics are built in.

- `mirrored` and `tpu` are `tf.distribute` strategies (TensorFlow backend). Keras 3 builds
  variables in the strategy's scope and splits every batch over its replicas.
  (`keras.distribution` is a silent no-op on TensorFlow, so it is not used there.)
- `data-parallel` is `keras.distribution.DataParallel` over all devices (JAX backend).
- The torch backend has no multi-device support in Keras 3: asking for it is an error.

`training.batch_size` is the global batch: each of N devices computes on batch_size / N
samples, and the update equals a single-device step on the whole batch, at the same learning
rate.

```python
check_distribution(config.distribution, "jax")      # before Keras starts
devices = start_distribution(config.distribution)   # after
with devices.scope():
    model = build_compiled_model(config, dataset, devices)
```
"""

import contextlib
import dataclasses

import numpy as np

from app.errors import UserError

# The backend each strategy runs on.
STRATEGY_BACKENDS = {"mirrored": "tensorflow", "tpu": "tensorflow", "data-parallel": "jax"}
TORCH_MESSAGE = (
    "Keras 3 has no multi-device training on the torch backend (keras.distribution raises "
    "there); use --backend jax --distribution data-parallel or --backend tensorflow "
    "--distribution mirrored, or torch's DistributedDataParallel in your own training loop"
)


@dataclasses.dataclass
class Devices:
    """The devices a run trains on.

    Attributes:
        strategy: the configured strategy name.
        replicas: how many devices share each batch.
        tf_strategy: the `tf.distribute.Strategy` of `mirrored` and `tpu`, else `None`.
    """

    strategy: str = "none"
    replicas: int = 1
    tf_strategy: object = None

    def scope(self):
        """The context to build models, optimizers and metrics in."""
        if self.tf_strategy is None:
            return contextlib.nullcontext()
        return self.tf_strategy.scope()

    @property
    def synchronizes_batch_norm(self):
        """Whether BatchNormalization must average its statistics over the replicas.

        JAX's data parallelism computes on the global batch already; TensorFlow's strategies
        compute per replica, so only `synchronized=True` matches a single device.
        """
        return self.tf_strategy is not None and self.replicas > 1

    def shardable(self, dataset, batch_size):
        """`dataset` with splits that divide evenly over the devices.

        Every batch, the last one included, is split over the devices, and each device's
        loss is averaged over its own share. JAX refuses a batch that does not divide;
        TensorFlow takes it but weights unequal shares equally, which biases the update. So
        the batch size must divide by the number of devices, and the training and
        validation splits lose their last `len % replicas` samples (fewer than the devices).
        On one device the dataset is returned unchanged.

        Raises:
            UserError: if `batch_size` is not a multiple of the number of devices.
        """
        if self.replicas == 1:
            return dataset
        if batch_size % self.replicas:
            raise UserError(f"training.batch_size {batch_size} must be a multiple of the "
                            f"{self.replicas} devices that {self.strategy} splits it over")
        from app.arrays import select

        even = {}
        for split in ("train", "val"):
            kept = np.arange(len(getattr(dataset, f"y_{split}")) // self.replicas * self.replicas)
            for prefix in ("x", "y"):
                even[f"{prefix}_{split}"] = select(getattr(dataset, f"{prefix}_{split}"), kept)
        return dataclasses.replace(dataset, **even)

    def describe(self):
        return {"strategy": self.strategy, "replicas": self.replicas}


def check_distribution(distribution_config, backend):
    """Checks that `backend` can run the configured strategy, before Keras starts.

    Raises:
        UserError: for the torch backend, or a strategy of another backend.
    """
    strategy = distribution_config.strategy
    if distribution_config.tpu is not None and strategy != "tpu":
        raise UserError(f"distribution.tpu names a TPU but distribution.strategy is {strategy!r}; "
                        "set --distribution tpu or drop --tpu")
    if strategy == "none":
        return
    if backend == "torch":
        raise UserError(TORCH_MESSAGE)
    needed = STRATEGY_BACKENDS[strategy]
    if backend != needed:
        other = "data-parallel" if backend == "jax" else "mirrored"
        raise UserError(f"--distribution {strategy} runs on the {needed} backend, not {backend}; "
                        f"use --backend {needed}, or --distribution {other} on {backend}")


def start_distribution(distribution_config):
    """Connects to the devices of the configured strategy; returns the `Devices`.

    Raises:
        UserError: when the TPU cannot be reached (never a silent single-device fallback).
    """
    strategy = distribution_config.strategy
    if strategy == "none":
        return Devices()
    if strategy == "data-parallel":
        import keras

        devices = keras.distribution.list_devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return Devices(strategy, len(devices))
    import tensorflow as tf

    if strategy == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        mirrored = tf.distribute.MirroredStrategy([device.name for device in devices])
        return Devices(strategy, mirrored.num_replicas_in_sync, mirrored)
    tpu = _connect_tpu(distribution_config.tpu)
    return Devices(strategy, tpu.num_replicas_in_sync, tpu)


def stop_distribution(devices):
    """Undoes what `start_distribution` set globally (JAX's default distribution)."""
    if devices.strategy == "data-parallel":
        import keras

        keras.distribution.set_distribution(None)


def _connect_tpu(name):
    import tensorflow as tf

    where = f"named {name!r}" if name else "on this machine"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except Exception as error:  # noqa: BLE001 (TF raises ValueError, NotFoundError, URLError, ...)
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise UserError(f"--distribution tpu: no TPU {where} ({type(error).__name__}: {detail}); "
                        "run on a Cloud TPU VM (see the README) or use --distribution none"
                        ) from None
