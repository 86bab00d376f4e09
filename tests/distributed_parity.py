"""Trains one model on one device and on two, from the same start; prints max |Δ weight|.

Run by `test_distribution.py` in a fresh process, because the two devices must exist before
the backend starts: `python tests/distributed_parity.py STRATEGY [--unsynchronized]
[--set KEY=VALUE ...]` with `KERAS_BACKEND` set (and, for JAX,
`XLA_FLAGS=--xla_force_host_platform_device_count=N`). Prints one JSON line:
`{"replicas": 2, "max_abs_difference": ..., "distribution": {...}}`.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(strategy, synchronized, overrides):
    from app.backend import give_virtual_devices_threads

    give_virtual_devices_threads(os.environ["KERAS_BACKEND"])  # as `python -m app` does
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np

    from app.config import load_config
    from app.data import load_dataset
    from app.distribution import Devices, start_distribution, stop_distribution
    from app.engine import variable_shapes

    config = load_config(overrides=[
        "model.size=student", "model.dropout=0.0", "training.epochs=2", "training.verbose=0",
        "training.batch_size=32", "optimizer.name=sgd", "optimizer.momentum=0.9",
        "schedule.lr=0.05", f"distribution.strategy={strategy}", *overrides,
    ])
    dataset = load_dataset(config.data, seed=config.seed)

    def start():
        return start_distribution(config.distribution,
                                  variables=lambda: variable_shapes(config, dataset))

    devices = start()
    data = devices.shardable(dataset, config.training.batch_size)
    stop_distribution(devices)  # the single-device run first, without JAX's global setting
    single, _ = _train(config, data, Devices(), synchronize=False)
    devices = start()
    several, model = _train(config, data, devices, synchronize=synchronized)
    stop_distribution(devices)
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(single, several))
    # Where JAX placed each weight after training: the mesh axes of its dimensions.
    placed = {}
    if os.environ["KERAS_BACKEND"] == "jax":
        placed = {weight.path: [str(axis) if axis else None
                                for axis in getattr(weight.value.sharding, "spec", ())]
                  for weight in model.weights}
    print(json.dumps({"replicas": devices.replicas, "max_abs_difference": difference,
                      "distribution": devices.describe(), "placed": placed}))


def _train(config, data, devices, synchronize):
    import numpy as np

    from app.backend import set_random_seed
    from app.engine import build_compiled_model, fit_configured

    set_random_seed(config.seed)  # without importing TensorFlow on JAX
    with devices.scope():
        model = build_compiled_model(config, data, devices if synchronize else None)
    fit_configured(model, config, data)  # `Batches` orders by the seed on both
    return [np.asarray(weight) for weight in model.get_weights()], model


if __name__ == "__main__":
    arguments = sys.argv[2:]
    overrides = [arguments[index + 1] for index, flag in enumerate(arguments) if flag == "--set"]
    main(sys.argv[1], synchronized="--unsynchronized" not in arguments, overrides=overrides)
