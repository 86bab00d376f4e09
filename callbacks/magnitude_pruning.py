"""Magnitude pruning during training, with masks that hold inside the compiled step.

Keras 3 has no pruning (tensorflow-model-optimization supports only Keras 2), so this is
the mechanism of its `prune_low_magnitude` rebuilt for all three backends:

- Each pruned kernel gets a mask, and the kernel variable gets a constraint that multiplies
  it by its mask. Keras applies constraints in the optimizer's `apply`, after every update,
  inside the compiled step: a pruned weight is exactly zero after each step whatever the
  optimizer's momentum says.
- The masks are kept with the optimizer's variables while training, because those are the
  state that JAX's stateless `apply` maps: a mask anywhere else would be traced as a
  constant. They are saved and restored with the optimizer (`fit --resume` included).
- At `on_train_end` the pruning is stripped: the final weights (EMA's too) are masked once
  more, the constraints and masks removed. What remains is a plain Keras model whose
  pruned weights are zeros; `.keras` files of it load anywhere.

```python
pruning = MagnitudePruning(final_sparsity=0.9, end_step=2000, frequency=100)
model.fit(x, y, epochs=10, callbacks=[pruning])
pruning.sparsity()   # {'overall': 0.9, 'layers': {'dense/kernel': 0.9, ...}}
```
"""

import contextlib
import functools

import keras
import numpy as np
from keras import ops

from callbacks.sparsity_schedule import PolynomialSparsity
from callbacks.training_state import sync_jax_state

# Layer weights that pruning considers: the kernels of dense, convolution and depthwise layers.
PRUNABLE_NAMES = ("kernel", "depthwise_kernel", "pointwise_kernel")
SCOPES = ("layer", "global")


def prunable_weights(model, layer_names=None):
    """The kernels that `MagnitudePruning` prunes, in the model's order: those of dense,
    convolution and depthwise layers that train (a frozen body's are left alone).

    Args:
        model: a built Keras model.
        layer_names: only these layers' kernels (`None`: every layer's).
    """
    chosen = []
    for layer in model._flatten_layers(include_self=False):
        if layer_names is not None and layer.name not in layer_names:
            continue
        for variable in layer._trainable_variables:  # the layer's own, not its sublayers'
            if (variable.trainable and variable.name in PRUNABLE_NAMES
                    and len(variable.shape) >= 2):
                chosen.append(variable)
    return chosen


def magnitude_masks(weights, sparsity, scope="layer", block_size=None, n_of_m=None,
                    pruned=None):
    """Masks that remove the smallest weights by magnitude (NumPy, on the host).

    Weights already pruned (`pruned` masks at 0) are removed first, whatever their value, so
    masks only ever grow sparser. Exactly `round(sparsity · size)` weights (or blocks) are
    removed per weight (`scope="layer"`) or over all weights together (`"global"`).

    Args:
        weights: NumPy arrays, kernels with the input axis second to last.
        sparsity: the fraction to remove; ignored with `n_of_m`.
        scope: `"layer"` (each weight its own threshold) or `"global"` (one threshold).
        block_size: prune runs of this many consecutive inputs of one output together,
            scored by their mean magnitude.
        n_of_m: `(n, m)`: keep the `n` largest of every `m` consecutive inputs (2:4 is what
            sparse tensor cores run).
        pruned: the current masks, or `None`.

    Returns:
        A list of float masks (1 keep, 0 pruned), shaped like `weights`.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}; got {scope!r}")
    pruned = pruned or [np.ones_like(weight) for weight in weights]
    group = n_of_m[1] if n_of_m else (block_size or 1)
    scores = [_grouped(np.abs(weight) * mask - (1 - mask), group)
              for weight, mask in zip(weights, pruned)]
    if n_of_m:
        kept = [_top_n(score, n_of_m[0]) for score in scores]
    elif scope == "global":
        kept_flat = _keep_largest(np.concatenate([score.mean(axis=-1).ravel()
                                                  for score in scores]), sparsity)
        ends = np.cumsum([score[..., 0].size for score in scores])
        kept = [part.reshape(score.shape[:-1] + (1,))
                for part, score in zip(np.split(kept_flat, ends[:-1]), scores)]
    else:
        kept = [_keep_largest(score.mean(axis=-1).ravel(), sparsity).reshape(
            score.shape[:-1] + (1,)) for score in scores]
    masks = []
    for keep, score, weight, mask in zip(kept, scores, weights, pruned):
        new = _ungrouped(np.broadcast_to(keep, score.shape), weight.shape)
        # A pruned weight stays pruned, even where n:m would have room for it.
        masks.append(np.minimum(new, mask).astype(weight.dtype))
    return masks


def _keep_largest(scores, sparsity):
    """False for the `round(sparsity · size)` smallest of the 1-D `scores` (the earliest of
    equal ones first), True for the rest."""
    keep = np.ones(scores.size, dtype=bool)
    keep[np.argsort(scores, kind="stable")[:round(sparsity * scores.size)]] = False
    return keep


def _grouped(array, group):
    """`(..., inputs, outputs)` → `(..., outputs, inputs // group, group)`."""
    moved = np.moveaxis(array, -2, -1)
    if moved.shape[-1] % group:
        raise ValueError(f"a kernel with {moved.shape[-1]} inputs cannot be pruned in groups "
                         f"of {group}")
    return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // group, group))


def _ungrouped(array, shape):
    moved = array.reshape(array.shape[:-2] + (-1,))
    return np.moveaxis(moved, -1, -2).reshape(shape)


def _top_n(score, n):
    """Within each group (last axis), True for the `n` largest scores (earliest on ties)."""
    order = np.argsort(-score, axis=-1, kind="stable")
    keep = np.zeros(score.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return keep


class _Mask(keras.constraints.Constraint):
    """Multiplies a kernel by its mask after the constraint it had before (if any)."""

    def __init__(self, mask, previous=None):
        self.mask = mask
        self.previous = previous

    def __call__(self, weight):
        if self.previous is not None:
            weight = self.previous(weight)
        return weight * ops.cast(self.mask, weight.dtype)


@keras.saving.register_keras_serializable(package="efficient_learning")
class MagnitudePruning(keras.callbacks.Callback):
    """Prunes the smallest kernel weights during training, on a polynomial-decay schedule.

    Steps are training batches counted by the callback over the whole run (resumed runs
    included). Masks are recomputed at the schedule's steps, at the start of the batch;
    weights that are exactly zero when training begins count as already pruned, so fine-tuning
    a pruned model keeps its zeros. It works under `GradientAccumulation` and `Lookahead`
    (both apply the constraint) and with the optimizers' EMA (the final weights are masked).

    Args:
        final_sparsity: the fraction of weights pruned from `end_step` on (`None` with
            `n_of_m`).
        initial_sparsity: the fraction pruned at `begin_step`.
        begin_step: the batch at which pruning starts.
        end_step: the batch at which the final sparsity is reached; `None`: the last batch
            of the first `fit`.
        frequency: batches between two mask updates.
        scope: `"layer"` (every kernel loses the same fraction) or `"global"` (one threshold
            over all kernels, which prunes large layers harder).
        block_size: prune blocks of this many consecutive inputs together.
        n_of_m: `(n, m)` structured sparsity: the `n` largest of every `m` inputs survive;
            the sparsity is `1 − n/m`.
        layer_names: the layers whose kernels are pruned (`None`: all dense, convolution and
            depthwise layers).

    Example:

    ```python
    model.fit(x, y, epochs=20, callbacks=[
        MagnitudePruning(final_sparsity=0.9, begin_step=200, frequency=50)])
    ```
    """

    def __init__(self, final_sparsity=None, initial_sparsity=0.0, begin_step=0, end_step=None,
                 frequency=100, scope="layer", block_size=None, n_of_m=None, layer_names=None):
        super().__init__()
        if (final_sparsity is None) == (n_of_m is None):
            raise ValueError("give either final_sparsity or n_of_m")
        if n_of_m is not None:
            n, m = n_of_m
            if not 0 < n < m:
                raise ValueError(f"n_of_m needs 0 < n < m; got {n_of_m}")
            final_sparsity = initial_sparsity = 1.0 - n / m
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}; got {scope!r}")
        if block_size is not None and n_of_m is not None:
            raise ValueError("give block_size or n_of_m, not both")
        self.final_sparsity = final_sparsity
        self.initial_sparsity = initial_sparsity
        self.begin_step = begin_step
        self.end_step = end_step
        self.frequency = frequency
        self.scope = scope
        self.block_size = block_size
        self.n_of_m = None if n_of_m is None else tuple(n_of_m)
        self.layer_names = None if layer_names is None else list(layer_names)
        self.step = 0
        self.schedule = None
        self._weights = []
        self._masks = []
        self._constraints = []
        # Checked now, not at the first batch.
        PolynomialSparsity(final_sparsity, initial_sparsity, begin_step,
                           max(begin_step, end_step or 0), frequency)

    def on_train_begin(self, logs=None):
        if self._masks:
            return  # still attached: a resumed epoch's second `fit`
        end_step = self.end_step
        if end_step is None:
            end_step = max(self.begin_step, self.params["epochs"] * self.params["steps"] - 1)
        self.schedule = PolynomialSparsity(self.final_sparsity, self.initial_sparsity,
                                           self.begin_step, end_step, self.frequency)
        self._weights = prunable_weights(self.model, self.layer_names)
        if not self._weights:
            raise ValueError("the model has no dense, convolution or depthwise kernels "
                             "to prune")
        sync_jax_state(self.model)
        optimizer = self.model.optimizer
        strategy = getattr(self.model, "distribute_strategy", None)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            for weight in self._weights:
                mask = optimizer.add_variable(
                    weight.shape, initializer="ones", dtype=weight.dtype,
                    name=f"pruning_mask_{weight.path.replace('/', '_')}")
                mask.assign(ops.cast(ops.not_equal(weight.value, 0), weight.dtype))
                self._masks.append(mask)
        # `.keras` files written while training (the best epoch's) hold the optimizer without
        # the masks, as a stripped model's would.
        optimizer.save_own_variables = functools.partial(_save_without_masks, optimizer,
                                                         {id(mask) for mask in self._masks})
        self._constraints = [weight.constraint for weight in self._weights]
        for weight, mask, previous in zip(self._weights, self._masks, self._constraints):
            weight.constraint = _Mask(mask, previous)
        # A step compiled by an earlier `fit` knows neither the constraints nor the masks.
        self.model.make_train_function(force=True)

    def on_train_batch_begin(self, batch, logs=None):
        if self.schedule.prunes_at(self.step):
            self.prune(self.schedule.sparsity(self.step))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1

    def prune(self, sparsity):
        """Recomputes the masks at `sparsity` now and zeroes the pruned weights."""
        sync_jax_state(self.model)
        weights = [np.asarray(ops.convert_to_numpy(weight.value)) for weight in self._weights]
        current = [np.asarray(ops.convert_to_numpy(mask.value)) for mask in self._masks]
        masks = magnitude_masks(weights, sparsity, self.scope, self.block_size, self.n_of_m,
                                pruned=current)
        for weight, mask, value, new in zip(self._weights, self._masks, weights, masks):
            mask.assign(new)
            weight.assign(value * new)

    def on_train_end(self, logs=None):
        self.strip()

    def strip(self):
        """Masks the weights a last time (after EMA's final values) and removes the masks
        and constraints: the model is a plain Keras model with zeros."""
        if not self._masks:
            return
        sync_jax_state(self.model)
        for weight, mask, previous in zip(self._weights, self._masks, self._constraints):
            weight.assign(weight.value * ops.cast(mask.value, weight.dtype))
            weight.constraint = previous
        optimizer = self.model.optimizer
        attached = {id(mask) for mask in self._masks}
        for index in reversed(range(len(optimizer._variables))):
            if id(optimizer._variables[index]) in attached:
                del optimizer._variables[index]  # by position: `==` on variables compares values
        self.model.train_function = None  # the next `fit` compiles a step without the masks
        del optimizer.save_own_variables  # the class's again
        self._masks = []

    def sparsity(self):
        """The fraction of zeros over the pruned kernels, and in each (`model_sparsity`)."""
        sync_jax_state(self.model)
        return model_sparsity(self.model, self.layer_names)

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = int(state["step"])

    def get_config(self):
        return {"final_sparsity": None if self.n_of_m else self.final_sparsity,
                "initial_sparsity": 0.0 if self.n_of_m else self.initial_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step,
                "frequency": self.frequency, "scope": self.scope,
                "block_size": self.block_size, "n_of_m": self.n_of_m,
                "layer_names": self.layer_names}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _save_without_masks(optimizer, masks, store):
    """`Optimizer.save_own_variables`, leaving out the variables whose ids are in `masks`."""
    kept = [variable for variable in optimizer.variables if id(variable) not in masks]
    for index, variable in enumerate(kept):
        store[str(index)] = variable.numpy()


def model_sparsity(model, layer_names=None):
    """`{"overall": fraction of zeros, "layers": {kernel path: fraction}}` over the kernels
    that `MagnitudePruning` would prune.

    Args:
        model: a built Keras model.
        layer_names: only these layers' kernels (`None`: every layer's).
    """
    kernels = prunable_weights(model, layer_names)
    zeros = [np.asarray(ops.convert_to_numpy(kernel.value)) == 0 for kernel in kernels]
    total = sum(zero.size for zero in zeros)
    return {"overall": float(sum(zero.sum() for zero in zeros) / max(total, 1)),
            "layers": {kernel.path: float(zero.mean()) for kernel, zero in zip(kernels, zeros)}}
