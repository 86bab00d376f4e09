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
  callback must act at every batch; `jit_compile: auto` compiles where that measured faster.

```python
with precision_policy("mixed_bfloat16"):
    model = build_model(...)
model.compile(..., **execution_settings(config, "jax"))
```
"""

import contextlib

from app.errors import UserError

# What `auto` picks per backend, from `python bench/throughput.py --execution` on the
# default model (README, "Precision and fast steps"): 8 batches per call on TensorFlow and
# JAX (1.7× and 1.4× the samples/s of one). TensorFlow keeps Keras's own `auto` for XLA
# (on GPUs and TPUs, not on a CPU, where it measured no faster and compiles for seconds).
# torch runs one step per call (Keras 3.15 allows no more there) and eagerly: with
# `torch.compile` the default model took 49 s to compile and then ran at half the speed.
AUTO_STEPS_PER_EXECUTION = {"tensorflow": 8, "jax": 8, "torch": 1}
AUTO_JIT_COMPILE = {"tensorflow": "auto", "jax": True, "torch": False}


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


def check_execution(training_config, backend):
    """Refuses what `backend` cannot run: several steps per execution on torch (Keras 3.15
    raises there).

    Raises:
        UserError: naming the key and what to set.
    """
    steps = training_config.steps_per_execution
    if backend == "torch" and steps != "auto" and steps > 1:
        raise UserError(f"training.steps_per_execution {steps} is not supported on the torch "
                        f"backend (Keras runs one step per call there); set it to 1 or auto")


def execution_settings(config, backend):
    """`model.compile`'s `steps_per_execution` and `jit_compile` for `config` on `backend`,
    with `auto` resolved."""
    training = config.training
    steps = training.steps_per_execution
    if steps == "auto":
        steps = 1 if per_batch_features(training) else AUTO_STEPS_PER_EXECUTION[backend]
    jit_compile = training.jit_compile
    if jit_compile == "auto":
        jit_compile = AUTO_JIT_COMPILE[backend]
    return {"steps_per_execution": steps, "jit_compile": jit_compile}


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

