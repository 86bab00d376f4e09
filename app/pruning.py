"""Pruning a finished run: magnitude pruning with fine-tuning, and lottery tickets.

Each round removes the smallest of the surviving kernel weights of the last round's model
(`callbacks.magnitude_masks`, the pruned ones first), sets the weights the round starts from
and trains with those masks held (`training.pruning` at a constant sparsity). The rounds' sparsities
grow geometrically to the target: round r of R keeps `(1 − s)^(r/R)` of the weights, so 10
rounds to 90 % remove 20.6 % of the survivors each, Frankle & Carbin's 20 %.

| `--rewind` | a round starts from |
|---|---|
| none | the last round's trained weights: pruning, then fine-tuning |
| `init` | the run's own initialization (seeded: the lottery ticket, Frankle & Carbin 2019) |
| `epoch:K` | the dense weights after K epochs of the run (late rewinding, Frankle et al. 2020) |

```python
history, metrics, rounds = prune_rounds(config, dataset, trained, sparsity=0.9, rounds=3,
                                        rewind_epoch=0, epochs=20, scope="layer",
                                        checkpoint_path=folder / "best.keras")
```
"""

import dataclasses
import re

from app.backend import set_random_seed
from app.errors import UserError

REWIND_FORMS = "init or epoch:K"


def parse_rewind(text):
    """`--rewind`'s epoch: `None` (no rewinding), 0 (`init`) or K (`epoch:K`).

    Raises:
        UserError: for anything else.
    """
    if text is None:
        return None
    if text == "init":
        return 0
    match = re.fullmatch(r"epoch:(\d+)", text)
    if match is None:
        raise UserError(f"--rewind must be {REWIND_FORMS} (e.g. epoch:2); got {text!r}")
    return int(match.group(1))


def round_sparsities(sparsity, rounds):
    """The sparsity after each of `rounds` rounds, ending at `sparsity`."""
    return [1.0 - (1.0 - sparsity) ** (index / rounds) for index in range(1, rounds + 1)]


def round_config(config, sparsity, epochs, scope):
    """`config` training `epochs` epochs with its masks held at `sparsity` throughout."""
    training = config.training
    pruning = dataclasses.replace(training.pruning, sparsity=sparsity, initial_sparsity=sparsity,
                                  begin_epoch=0, end_epoch=1, scope=scope, n_of_m=None,
                                  block_size=None)
    return dataclasses.replace(config, training=dataclasses.replace(
        training, epochs=epochs, pruning=pruning))


def rewound_weights(config, dataset, rewind_epoch):
    """The values of every weight of the run after `rewind_epoch` epochs (0: as initialized),
    replayed from its seed: a run's training is deterministic on its backend."""
    from app.engine import build_compiled_model, fit_configured
    from callbacks.training_state import sync_jax_state, to_numpy

    set_random_seed(config.seed)
    model = build_compiled_model(config, dataset)
    if rewind_epoch:
        dense = dataclasses.replace(config, training=dataclasses.replace(
            config.training, pruning=dataclasses.replace(config.training.pruning, sparsity=None,
                                                         n_of_m=None)))
        print(f"replaying the dense run's first {rewind_epoch} epochs to rewind to:")
        fit_configured(model, dense, dataset, epochs=rewind_epoch)
        sync_jax_state(model)
    return to_numpy([weight.value for weight in model.weights])


def prune_rounds(config, dataset, trained, sparsity, rounds, rewind_epoch, epochs, scope,
                 checkpoint_path):
    """Prunes `trained` to `sparsity` in `rounds` rounds of training.

    Args:
        config: the trained run's configuration.
        dataset: its data (`app.rundir.load_run_dataset`).
        trained: its best model.
        sparsity: the fraction of kernel weights to remove, in (0, 1).
        rounds: rounds of pruning and training.
        rewind_epoch: `None` to fine-tune the pruned weights, else the epoch whose weights
            each round restarts from (0: the initialization).
        epochs: the epochs each round trains.
        scope: `"layer"` or `"global"` (`callbacks.MagnitudePruning`).
        checkpoint_path: where each round keeps its best model (the last round's stays).

    Returns:
        `(history, metrics, rounds)`: the last round's history and metrics (as `fit`'s), and
        per round its sparsity and test accuracy.
    """
    from app.engine import train_and_test
    from app.model_files import load_model_file
    from callbacks import magnitude_masks, prunable_weights
    from callbacks.training_state import to_numpy

    rewound = None if rewind_epoch is None else rewound_weights(config, dataset, rewind_epoch)
    masks, results, current = None, [], trained
    for index, target in enumerate(round_sparsities(sparsity, rounds), start=1):
        kernels = to_numpy([kernel.value for kernel in prunable_weights(current)])
        masks = magnitude_masks(kernels, target, scope, pruned=masks)
        starting = rewound if rewound is not None else to_numpy(
            [weight.value for weight in current.weights])
        print(f"round {index}/{rounds}: {target:.1%} of the kernel weights pruned")
        history, metrics = train_and_test(
            round_config(config, target, epochs, scope), dataset, checkpoint_path,
            start=starting_from(starting, masks))
        current = load_model_file(checkpoint_path)
        results.append({"round": index, "sparsity": metrics["sparsity"]["overall"],
                        "test_accuracy": metrics["test"]["accuracy"],
                        "best_epoch": metrics["best"]["epoch"]})
    return history, metrics, results


def starting_from(values, masks):
    """A `train_and_test` start: every weight set to `values`, the kernels then masked."""
    def start(model):
        from keras import ops

        from callbacks import prunable_weights

        if [tuple(weight.shape) for weight in model.weights] != [value.shape for value in values]:
            raise ValueError("the rebuilt model's weights differ from the trained model's")
        for weight, value in zip(model.weights, values):
            weight.assign(value)
        for kernel, mask in zip(prunable_weights(model), masks):
            kernel.assign(ops.multiply(kernel.value, ops.convert_to_tensor(mask)))
    return start
