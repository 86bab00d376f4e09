"""Choosing the Keras backend before Keras is imported, and describing the machine.

The default backend is JAX: on this project's 2-core CPU reference machine it trains the
default MLP on digits fastest end to end (see `bench/throughput.py` and the README).
"""

import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path

from app.errors import UserError

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT_BACKEND = "jax"


def select_backend(name=None):
    """Sets `KERAS_BACKEND` for this process and returns the backend's name.

    Args:
        name: `tensorflow`, `jax` or `torch`; `None` takes the `KERAS_BACKEND` environment
            variable, else `DEFAULT_BACKEND`.

    Raises:
        UserError: for an unknown backend, one whose package is not installed, or one
            other than the backend of an already imported Keras.
    """
    name = name or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if not is_installed(name):
        raise UserError(
            f"backend {name!r} is not installed; pip install 'efficient-learning[{name}]' "
            f"or choose an installed one ({', '.join(installed_backends()) or 'none'})"
        )
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != name:
            raise UserError(
                f"Keras is already running on {keras.backend.backend()!r} in this process; "
                f"start a new process with --backend {name}"
            )
    os.environ["KERAS_BACKEND"] = name
    return name


def keep_tensorflow_out_of_keras():
    """On the JAX and torch backends, makes Keras take TensorFlow as not installed.

    Keras imports TensorFlow wherever it is installed, to seed it in
    `keras.utils.set_random_seed` (for `tf.data` pipelines) and to look for its shapes when it
    saves a model; the app uses neither on JAX or torch, and the import took 3 to 4 s of
    every JAX or torch process on a 2-core machine. Code that imports TensorFlow itself
    still can. Nothing changes on TensorFlow, once Keras has imported it, or if Keras's lazy
    import (`keras.src.utils.module_utils.tensorflow`) lacks the attributes it has in Keras
    3.15.

    Example:

    ```python
    select_backend("jax")
    keep_tensorflow_out_of_keras()
    ```
    """
    import keras
    from keras.src.utils import module_utils

    if keras.backend.backend() == "tensorflow":
        return
    lazy_tensorflow = getattr(module_utils, "tensorflow", None)
    # Its own attributes only: looking up any other attribute imports TensorFlow.
    state = getattr(lazy_tensorflow, "__dict__", {})
    if state.get("module", True) is None and "_available" in state:
        state["_available"] = False


# The compiled programs kept on disk, at most: the least recently used go first.
COMPILATION_CACHE_BYTES = 2**30


def use_compilation_cache(backend):
    """On JAX, keeps the programs XLA compiles in a folder on disk, so that the next process
    that compiles the same program loads it instead: the next run of a configuration, a
    resumed run, a search's next trial with the same shapes, the other processes of a cluster.

    Keras leaves JAX's persistent cache off, so every process compiled each training step and
    each variable's initializer again (a MobileNetV3-Small took 16 s to build on 2 CPU cores,
    12 s of it compiling its initializers). The folder is `$XDG_CACHE_HOME/efficient-learning/jax`
    (else `~/.cache/...`), kept under `COMPILATION_CACHE_BYTES`. JAX's own variables decide
    instead where they are set: `JAX_COMPILATION_CACHE_DIR` for another folder (with JAX's
    defaults), `JAX_ENABLE_COMPILATION_CACHE=false` to compile everything anew. Without the
    `filelock` package (the `jax` extra installs it), which JAX needs to bound the folder's
    size, nothing changes. A cached program computes what the compiled one does. Call it
    before JAX is imported: it sets environment variables, which the processes this one
    starts inherit.

    Args:
        backend: the Keras backend of this process; nothing changes on the others.

    Example:

    ```python
    use_compilation_cache(select_backend("jax"))
    ```
    """
    if (backend != "jax" or "JAX_COMPILATION_CACHE_DIR" in os.environ
            or not is_installed("filelock")):
        return
    from app.image_folder import default_cache_dir  # beside the image folders' cache

    os.environ.update({
        "JAX_COMPILATION_CACHE_DIR": str(default_cache_dir() / "jax"),
        # JAX's default keeps only programs that took a second or more; an initializer takes
        # a fifth of one, and a model has dozens.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(COMPILATION_CACHE_BYTES),
    })


# XLA's CPU client threads per virtual CPU device that `give_virtual_devices_threads` asks for.
THREADS_PER_VIRTUAL_DEVICE = 4


def give_virtual_devices_threads(backend, environ=None):
    """On JAX with N virtual CPU devices (`--xla_force_host_platform_device_count=N` in
    `XLA_FLAGS`, or `JAX_NUM_CPU_DEVICES=N`), gives XLA's CPU client
    `THREADS_PER_VIRTUAL_DEVICE` × N threads to run programs on, through `PJRT_NPROC`.

    The client has max(cores, N) of them. A program over N devices runs one task per device,
    and an all-gather or all-reduce in it waits for all N tasks; when the tasks of the programs
    dispatched after it hold the threads while they wait for it, its last task never gets one,
    and XLA aborts the process after 40 s. On 2 cores with 4 virtual devices, a model-parallel
    `fit` aborted so in 3 runs of 3 beside 3 busy processes, and passed 12 of 12 with 8 or 16
    threads, in the same time as before when the machine is idle. A `PJRT_NPROC` or `NPROC`
    already set decides instead. Call it before JAX starts its CPU client (its first device
    or computation): it sets an environment variable, which the processes this one starts
    inherit.

    Args:
        backend: the Keras backend of this process; nothing changes on the others.
        environ: the environment variables to read and set (`None`: this process's).

    Example:

    ```python
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    give_virtual_devices_threads(select_backend("jax"))  # PJRT_NPROC=16
    ```
    """
    environ = os.environ if environ is None else environ
    if backend != "jax" or "PJRT_NPROC" in environ or "NPROC" in environ:
        return
    forced = re.findall(r"--xla_force_host_platform_device_count=(\d+)",
                        environ.get("XLA_FLAGS", ""))
    devices = environ.get("JAX_NUM_CPU_DEVICES") or (forced[-1] if forced else "1")
    if devices.isdigit() and int(devices) > 1:  # else JAX itself says what is wrong
        environ["PJRT_NPROC"] = str(THREADS_PER_VIRTUAL_DEVICE * int(devices))


def compilation_cache():
    """`(folder, bytes)`: where JAX keeps its compiled programs and how much they take, or
    `None` where it keeps none (`use_compilation_cache`). Imports JAX."""
    import jax

    folder = jax.config.jax_compilation_cache_dir
    if not (jax.config.jax_enable_compilation_cache and folder):
        return None
    files = [path for path in Path(folder).glob("*") if path.is_file()]
    return folder, sum(path.stat().st_size for path in files)


def set_random_seed(seed):
    """`keras.utils.set_random_seed(seed)` after `keep_tensorflow_out_of_keras()`: every run
    seeds before it builds or saves a model.

    Args:
        seed: the integer that Python's, NumPy's, the backend's and Keras's generators start
            from.
    """
    import keras

    keep_tensorflow_out_of_keras()
    keras.utils.set_random_seed(seed)


def is_installed(name):
    return importlib.util.find_spec(name) is not None


def installed_backends():
    return [name for name in BACKENDS if is_installed(name)]


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def backend_versions():
    """Versions of Keras, NumPy and each installed backend package."""
    packages = {"keras": "keras", "numpy": "numpy", "tensorflow": "tensorflow",
                "jax": "jax", "torch": "torch"}
    versions = {"python": sys.version.split()[0]}
    for label, package in packages.items():
        version = package_version(package) or package_version(f"{package}-cpu")
        if version:
            versions[label] = version
    return versions


def list_devices():
    """The devices the current Keras backend can compute on, e.g. `['cpu:0']`."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return [f"{device.platform}:{device.id}" for device in jax.devices()]
    if backend == "tensorflow":
        import tensorflow as tf

        return [device.name.replace("/physical_device:", "").lower()
                for device in tf.config.list_physical_devices()]
    import torch

    devices = ["cpu:0"]
    devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps:0")
    return devices
