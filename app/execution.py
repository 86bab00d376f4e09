"""How the compiled training step runs: its precision, how many steps one call runs, and
whether it is compiled (`training.precision`, `training.steps_per_execution`,
`training.jit_compile`).

- `precision`: `mixed_bfloat16` and `mixed_float16` build the model under Keras's dtype
  policy of that name, so that layers compute in 16 bits and keep float32 weights;
  `mixed_float16` also wraps the optimizer in `keras.optimizers.LossScaleOptimizer`
  (`app.tables.optimizers.build_optimizer`), whose dynamic loss scale skips the steps whose
  gradients overflow without advancing `iterations`.
- `steps_per_execution: auto` runs several batches per call to the compiled step on the
  backends where that measured faster (`bench/throughput.py --execution`), except when a
  callback must act at every batch; `jit_compile: auto` is Keras's own choice per backend,
  which is what measured fastest.

```python
with precision_policy("mixed_bfloat16"):
    model = build_model(...)
compile_model(model, config, "jax", optimizer=..., loss=..., metrics=[...])
```
"""

import contextlib

from app.errors import UserError

# What `steps_per_execution: auto` picks per backend, from `python bench/throughput.py
# --execution` on the default model (README, "Precision and fast steps"): 8 batches per call
# on TensorFlow and JAX (1.7× and 1.4× the samples/s of one); torch runs one (Keras 3.15
# allows no more there). `jit_compile: auto` is Keras's own, which measured fastest: XLA on
# TensorFlow's GPUs and TPUs but not on a CPU (no faster, seconds of compilation), JAX
# compiled, torch eager (with `torch.compile` the default model took 49 s to compile and then
# ran at half the speed).
AUTO_STEPS_PER_EXECUTION = {"tensorflow": 8, "jax": 8, "torch": 1}


def per_batch_features(training_config):
    """The configured features whose callbacks must run at every batch, so that
    `steps_per_execution` stays 1 with them: pruning recomputes its masks at exact steps,
    and gradient accumulation weighs each epoch's short last batch before it is applied."""
    from app.tables.optimizers import accumulates

    features = []
    if training_config.pruning.enabled:
        features.append("training.pruning")
    if accumulates(training_config):
        features.append("training.accumulation_steps")
    return features


def check_steps_per_execution(training_config, prefix="training."):
    """Refuses several steps per execution with a feature that needs every batch.

    Raises:
        UserError: naming the feature and what to set.
    """
    steps = training_config.steps_per_execution
    features = per_batch_features(training_config)
    if steps != "auto" and steps > 1 and features:
        raise UserError(f"{prefix}steps_per_execution {steps} runs {steps} batches per call, "
                        f"but {features[0]} acts at every batch; set {prefix}"
                        f"steps_per_execution to 1 or auto")


def check_execution(config, backend):
    """Refuses several steps per execution where Keras 3.15 cannot run them: on torch (it
    raises) and under TensorFlow's `mirrored` strategy (its multi-step loop fails there with
    "You must feed a value for placeholder tensor").

    Raises:
        UserError: naming the key and what to set.
    """
    steps = config.training.steps_per_execution
    if steps == "auto" or steps == 1:
        return
    if backend == "torch":
        raise UserError(f"training.steps_per_execution {steps} is not supported on the torch "
                        f"backend (Keras runs one step per call there); set it to 1 or auto")
    if backend == "tensorflow" and config.distribution.strategy == "mirrored":
        raise UserError(f"training.steps_per_execution {steps} fails under TensorFlow's "
                        f"mirrored strategy in Keras 3.15; set it to 1 or auto")


def steps_per_execution(config, backend):
    """The batches per call to the compiled step for `config` on `backend`, `auto` resolved."""
    steps = config.training.steps_per_execution
    if steps != "auto":
        return steps
    # tf.distribute's strategies: see `check_execution` (`tpu` is untested here).
    strategy = config.distribution.strategy in ("mirrored", "tpu")
    if per_batch_features(config.training) or (backend == "tensorflow" and strategy):
        return 1
    return AUTO_STEPS_PER_EXECUTION[backend]


def compile_model(model, config, backend, **compile_arguments):
    """`model.compile(**compile_arguments)` with the configured `jit_compile` and steps per
    execution.

    The steps are set after `compile`, not given to it: a `.keras` file keeps the arguments
    of `compile` and compiles again when loaded, and Keras-torch refuses more than one step
    there, so a model trained on JAX would not load on torch.
    """
    model.compile(**compile_arguments, jit_compile=config.training.jit_compile)
    model.steps_per_execution = steps_per_execution(config, backend)


@contextlib.contextmanager
def precision_policy(precision):
    """Builds the layers made inside it under Keras's dtype policy `precision`, and restores
    the previous global policy after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)

