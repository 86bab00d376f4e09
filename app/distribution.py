"""Training on several devices: `distribution.strategy` checked against the backend, and the
scope that the model, its optimizer and metrics are built in.

- `mirrored` and `tpu` are `tf.distribute` strategies (TensorFlow backend). Keras 3 builds
  variables in the strategy's scope and splits every batch over its replicas.
  (`keras.distribution` is a silent no-op on TensorFlow, so it is not used there.)
- `data-parallel` is `keras.distribution.DataParallel` over all devices (JAX backend).
- `model-parallel` is `keras.distribution.ModelParallel` on a `batch` × `model` device mesh
  (JAX backend): the batch is split along `batch`, and each kernel as its layout says along
  `model` (`model_parallel_layout`).
- The torch backend has no multi-device support in Keras 3: asking for it is an error.
- Several processes (one per host, or here several on one machine) join one JAX runtime as a
  `Cluster` (`--coordinator`, `--num-processes`, `--process-id`, or Keras's
  `KERAS_DISTRIBUTION_*` variables); `data-parallel` then spans every process's devices, and
  each process feeds its own part of every batch (`app.feeding.process_part`).

`training.batch_size` is the global batch: each of N devices computes on batch_size / N
samples, and the update equals a single-device step on the whole batch, at the same learning
rate.

```python
check_distribution(config.distribution, "jax")      # before Keras starts
devices = start_distribution(config.distribution,   # after; model-parallel lays out
                             variables=lambda: variable_shapes(config, dataset))
with devices.scope():
    model = build_compiled_model(config, dataset, devices)
```
"""

import contextlib
import dataclasses
import os
import re

import numpy as np

from app.errors import UserError

# Keras's variables for `keras.distribution.initialize`, read when the flags are not given.
CLUSTER_VARIABLES = {"coordinator": "KERAS_DISTRIBUTION_JOB_ADDRESSES",
                     "num_processes": "KERAS_DISTRIBUTION_NUM_PROCESSES",
                     "process_id": "KERAS_DISTRIBUTION_PROCESS_ID"}
TENSORFLOW_MULTI_WORKER_MESSAGE = (
    "several processes on the tensorflow backend need MultiWorkerMirroredStrategy, which "
    "fails in Keras 3.15 (keras-team/keras#20585); use --backend jax --distribution "
    "data-parallel with --coordinator, --num-processes and --process-id")
# The backend each strategy runs on.
STRATEGY_BACKENDS = {"mirrored": "tensorflow", "tpu": "tensorflow", "data-parallel": "jax",
                     "model-parallel": "jax"}
MESH_AXES = ("batch", "model")
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
        mesh: `model-parallel`'s `{"batch": B, "model": M}`, else `None`.
        layout: `model-parallel`'s axes per variable path (`None`: not sharded), else `None`.
        processes: how many processes the devices belong to (`Cluster`).
        jax_distribution: the `keras.distribution.Distribution` of `data-parallel` and
            `model-parallel`, else `None`.
    """

    strategy: str = "none"
    replicas: int = 1
    tf_strategy: object = None
    mesh: dict = None
    layout: dict = None
    processes: int = 1
    jax_distribution: object = None

    def scope(self):
        """The context to build models, optimizers and metrics in, and to train them in.

        `start_distribution` sets JAX's distribution globally as well; this scope sets it
        again where something cleared it in between (`keras.backend.clear_session`, which
        KerasTuner calls before building each trial's model).
        """
        if self.jax_distribution is not None:
            return self.jax_distribution.scope()
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
        description = {"strategy": self.strategy, "replicas": self.replicas}
        if self.processes > 1:
            description["processes"] = self.processes
        if self.mesh is not None:
            description.update(mesh=self.mesh, layout=self.layout)
        return description

    def sharding_lines(self, shapes):
        """How `model-parallel` shards each variable, a line each (`shapes`: path → shape)."""
        if self.layout is None:
            return []
        mesh = " × ".join(f"{axis} {size}" for axis, size in self.mesh.items())
        lines = [f"model-parallel on a mesh of {mesh}:"]
        width = max(len(path) for path in self.layout)
        for path, axes in self.layout.items():
            shape = "×".join(str(size) for size in shapes[path])
            sharding = ("replicated" if axes is None else
                        "(" + ", ".join(axis or "·" for axis in axes) + ")")
            lines.append(f"  {path:<{width}}  {shape:<14} {sharding}")
        return lines


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes that train one run together, each on its own devices.

    Attributes:
        coordinator: `HOST:PORT` of process 0, which the others connect to.
        num_processes: how many processes train the run.
        process_id: this process's number; process 0 writes the run directory.
    """

    coordinator: str = None
    num_processes: int = 1
    process_id: int = 0

    @property
    def several(self):
        return self.num_processes > 1


def read_cluster(coordinator=None, num_processes=None, process_id=None, environ=None):
    """The `Cluster` of the flags, each missing one read from Keras's variable
    (`CLUSTER_VARIABLES`, as `keras.distribution.initialize` reads them).

    Args:
        coordinator: `--coordinator`, or `None`.
        num_processes: `--num-processes`, or `None`.
        process_id: `--process-id`, or `None`.
        environ: the environment to read the variables from (default: this process's).

    Raises:
        UserError: an incomplete or inconsistent cluster.

    Example:

    ```python
    read_cluster("10.0.0.2:1234", 2, 1)   # Cluster("10.0.0.2:1234", 2, 1)
    read_cluster()                        # Cluster(): one process
    ```
    """
    environ = os.environ if environ is None else environ
    given = {"coordinator": coordinator, "num_processes": num_processes,
             "process_id": process_id}
    values = {}
    for key, value in given.items():
        if value is None and environ.get(CLUSTER_VARIABLES[key]):
            value = environ[CLUSTER_VARIABLES[key]]
            if key != "coordinator":
                if not value.isdigit():
                    raise UserError(f"{CLUSTER_VARIABLES[key]} must be an integer; got "
                                    f"{value!r}")
                value = int(value)
        values[key] = value
    if values["num_processes"] is None or values["num_processes"] == 1:
        return Cluster()
    cluster = Cluster(values["coordinator"], values["num_processes"], values["process_id"])
    if cluster.coordinator is None or cluster.process_id is None:
        raise UserError(f"--num-processes {cluster.num_processes} needs --coordinator "
                        f"HOST:PORT (process 0's address) and --process-id (0 to "
                        f"{cluster.num_processes - 1}) for every process")
    host, _, port = cluster.coordinator.split(",")[0].rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--coordinator must be HOST:PORT, e.g. 10.0.0.2:1234; got "
                        f"{cluster.coordinator!r}")
    if not 0 <= cluster.process_id < cluster.num_processes:
        raise UserError(f"--process-id must be 0 to {cluster.num_processes - 1} for "
                        f"{cluster.num_processes} processes; got {cluster.process_id}")
    return cluster


def check_cluster(cluster, distribution_config, backend):
    """Refuses several processes where they cannot train: not on JAX, not data-parallel.

    Raises:
        UserError: naming what to use instead.
    """
    if not cluster.several:
        return
    if backend == "tensorflow":
        raise UserError(TENSORFLOW_MULTI_WORKER_MESSAGE)
    if backend == "torch":
        raise UserError(TORCH_MESSAGE)
    if distribution_config.strategy != "data-parallel":
        raise UserError(f"--num-processes {cluster.num_processes} trains data-parallel over "
                        f"the devices of every process; add --distribution data-parallel")


def join_cluster(cluster):
    """Connects this process to the others (JAX's distributed runtime), before any device is
    used; a no-op for one process."""
    if not cluster.several:
        return
    import keras

    from app.backend import keep_tensorflow_out_of_keras

    # Keras seeds every process alike here, through `keras.utils.set_random_seed`, which
    # would import TensorFlow into each process (3 to 4 s on 2 cores).
    keep_tensorflow_out_of_keras()
    keras.distribution.initialize(cluster.coordinator, cluster.num_processes,
                                  cluster.process_id)


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


def start_distribution(distribution_config, variables=None):
    """Connects to the devices of the configured strategy; returns the `Devices`.

    Args:
        distribution_config: the `distribution` section.
        variables: for `model-parallel`, a function returning the model's `{path: shape}`
            (`app.engine.variable_shapes`), which the layout is made for.

    Raises:
        UserError: when the TPU cannot be reached (never a silent single-device fallback),
            or a mesh or layout that does not fit the devices or the model.
    """
    strategy = distribution_config.strategy
    if strategy == "none":
        return Devices()
    if strategy in ("data-parallel", "model-parallel"):
        import keras

        devices = keras.distribution.list_devices()
        if strategy == "data-parallel":
            import jax

            # Several processes each give Keras their own part of every batch (`Batches`).
            data_parallel = keras.distribution.DataParallel(
                devices=devices, auto_shard_dataset=jax.process_count() == 1)
            keras.distribution.set_distribution(data_parallel)
            return Devices(strategy, len(devices), processes=jax.process_count(),
                           jax_distribution=data_parallel)
        return _start_model_parallel(distribution_config, devices, variables())
    import tensorflow as tf

    if strategy == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        mirrored = tf.distribute.MirroredStrategy([device.name for device in devices])
        return Devices(strategy, mirrored.num_replicas_in_sync, mirrored)
    tpu = _connect_tpu(distribution_config.tpu)
    return Devices(strategy, tpu.num_replicas_in_sync, tpu)


def stop_distribution(devices):
    """Undoes what `start_distribution` set globally (JAX's default distribution)."""
    if devices.strategy in ("data-parallel", "model-parallel"):
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


def model_parallel_layout(mesh, shapes, user_layout=None):
    """The axes each variable is sharded along, `None` where it is replicated.

    Without `user_layout`, every kernel (dense: `(in, out)`; convolution: `(h, w, in, out)`)
    is split along its output axis over `model` where that divides evenly; everything else is
    replicated. `user_layout` maps patterns to axes instead; as in Keras's `LayoutMap`, a
    pattern must match a variable's whole path (`re.fullmatch`).

    Args:
        mesh: `{"batch": B, "model": M}`.
        shapes: `{path: shape}` of the model's variables.
        user_layout: `distribution.layout`, `{pattern: [axis or None, ...] or None}` (`None`:
            replicated), or `None` for the built-in layout.

    Raises:
        UserError: a pattern that matches no variable, or two patterns for one variable, or
            axes that do not fit a variable's shape.
    """
    if user_layout is None:
        model = mesh["model"]
        return {path: (*[None] * (len(shape) - 1), "model")
                if path.endswith("/kernel") and len(shape) in (2, 4) and shape[-1] % model == 0
                else None for path, shape in shapes.items()}
    layout, claimed = dict.fromkeys(shapes), {}
    for pattern, axes in user_layout.items():
        matched = [path for path in shapes if re.fullmatch(pattern, path)]
        if not matched:
            example = next(iter(shapes))
            raise UserError(f"distribution.layout pattern {pattern!r} matches no variable; a "
                            f"pattern matches a whole path such as {example!r} (use "
                            f"'.*{pattern}' to match its end)")
        for path in matched:
            if path in claimed:
                raise UserError(f"distribution.layout: {path} matches two patterns, "
                                f"{claimed[path]!r} and {pattern!r}; make them exclusive")
            claimed[path] = pattern
            if axes is not None:  # null: replicated
                layout[path] = _checked_axes(pattern, axes, path, shapes[path], mesh)
    return layout


def _checked_axes(pattern, axes, path, shape, mesh):
    where = f"distribution.layout {pattern!r} (matching {path}, shape {shape})"
    if not isinstance(axes, list) or len(axes) != len(shape):
        raise UserError(f"{where} needs a list of {len(shape)} axes (batch, model or null); "
                        f"got {axes!r}")
    for size, axis in zip(shape, axes):
        if axis is not None and axis not in MESH_AXES:
            raise UserError(f"{where}: {axis!r} is not a mesh axis; use batch, model or null")
        if axis is not None and size % mesh[axis]:
            raise UserError(f"{where}: a dimension of {size} does not split over the "
                            f"{mesh[axis]} devices of {axis}")
    return tuple(axes)


def _start_model_parallel(distribution_config, devices, shapes):
    import keras

    mesh = distribution_config.mesh or {"batch": 1, "model": len(devices)}
    if mesh["batch"] * mesh["model"] != len(devices):
        raise UserError(f"distribution.mesh {mesh} needs {mesh['batch'] * mesh['model']} "
                        f"devices but JAX sees {len(devices)}; make batch × model "
                        f"{len(devices)}")
    layout = model_parallel_layout(mesh, shapes, distribution_config.layout)
    device_mesh = keras.distribution.DeviceMesh(
        (mesh["batch"], mesh["model"]), list(MESH_AXES), devices)
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for path, axes in layout.items():
        if axes is not None:
            layout_map[re.escape(path)] = axes
    model_parallel = keras.distribution.ModelParallel(layout_map=layout_map,
                                                      batch_dim_name="batch")
    keras.distribution.set_distribution(model_parallel)
    return Devices("model-parallel", mesh["batch"], mesh=mesh, layout=layout,
                   jax_distribution=model_parallel)
