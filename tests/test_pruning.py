"""Magnitude pruning (`callbacks.MagnitudePruning`), `training.pruning` and `python -m app prune`.

References: the schedule is tensorflow-model-optimization's `PolynomialDecay` formula, written
out here; masks are checked by counting; rewinding against a model built afresh from the run's
seed.
"""

import json
import zipfile

import keras
import numpy as np
import pytest

import app.engine
from callbacks import (GradientAccumulation, Lookahead, MagnitudePruning, PolynomialSparsity,
                       magnitude_masks, model_sparsity, prunable_weights)
from tests.helpers import fit, fit_arguments, interrupt_at, run_subprocess


def tfmot_sparsity(step, initial, final, begin, end, power=3):
    """tensorflow_model_optimization's `PolynomialDecay.__call__`
    (tensorflow_model_optimization/python/core/sparsity/keras/pruning_schedule.py)."""
    p = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return final + (initial - final) * (1 - p) ** power


def test_the_schedule_follows_zhu_and_guptas_formula_and_prunes_every_frequency_steps():
    schedule = PolynomialSparsity(0.9, initial_sparsity=0.1, begin_step=10, end_step=95,
                                  frequency=20)
    for step in range(0, 120):
        assert schedule.sparsity(step) == pytest.approx(tfmot_sparsity(step, 0.1, 0.9, 10, 95))
    assert [step for step in range(120) if schedule.prunes_at(step)] == [10, 30, 50, 70, 90, 95]
    assert PolynomialSparsity.from_config(schedule.get_config()).get_config() == \
        schedule.get_config()
    with pytest.raises(ValueError, match="final_sparsity must be in"):
        PolynomialSparsity(1.0)


def test_masks_remove_exact_counts_per_layer_globally_in_blocks_and_n_of_m():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(8, 6)).astype(np.float32),
               rng.normal(size=(3, 3, 4, 5)).astype(np.float32)]
    layer = magnitude_masks(weights, 0.5, "layer")
    assert [int(mask.sum()) for mask in layer] == [24, 90]
    for weight, mask in zip(weights, layer):  # the kept weights are the largest
        assert np.abs(weight[mask == 1]).min() >= np.abs(weight[mask == 0]).max()
    together = magnitude_masks(weights, 0.75, "global")
    assert sum(int(mask.sum()) for mask in together) == round(0.25 * (48 + 180))
    kept = np.concatenate([np.abs(w)[m == 1] for w, m in zip(weights, together)])
    removed = np.concatenate([np.abs(w)[m == 0] for w, m in zip(weights, together)])
    assert kept.min() >= removed.max()
    blocks = magnitude_masks(weights, 0.5, block_size=2)[0]
    assert np.array_equal(blocks[0::2], blocks[1::2])  # inputs 2k and 2k+1 go together
    two_of_four = magnitude_masks(weights, None, n_of_m=(2, 4))
    for weight, mask in zip(weights, two_of_four):
        groups = np.moveaxis(mask, -2, -1).reshape(-1, 4)
        assert np.all(groups.sum(axis=1) == 2)
    # Already pruned weights go first and stay pruned, whatever their value.
    again = magnitude_masks(weights, 0.6, "layer", pruned=layer)
    assert all(np.all(new <= old) for new, old in zip(again, layer))


def small_model(optimizer):
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(3)])
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class ZerosAt(keras.callbacks.Callback):
    """Records where each kernel is zero at the end of one batch (counted over the run)."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen, self.zeros = step, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            from callbacks.training_state import sync_jax_state

            sync_jax_state(self.model)
            self.zeros = [np.asarray(keras.ops.convert_to_numpy(kernel.value)) == 0
                          for kernel in prunable_weights(self.model)]


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.Adam(0.05),
    *(pytest.param(make, marks=pytest.mark.slow) for make in (
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.AdamW(0.05, use_ema=True, ema_overwrite_frequency=3),
        lambda: Lookahead(keras.optimizers.Adam(0.05), sync_period=3),
        lambda: GradientAccumulation(keras.optimizers.Adam(0.05), steps=3))),
], ids=["adam", "sgd-momentum", "adamw-ema", "lookahead", "accumulation"])
def test_pruned_weights_stay_exactly_zero_however_the_optimizer_moves(optimizer):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(256, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)
    model = small_model(optimizer())
    pruning = MagnitudePruning(final_sparsity=0.8, begin_step=2, end_step=10, frequency=4)
    at_end_of_pruning = ZerosAt(11)  # the batch after the last mask update (step 10)
    model.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[pruning, at_end_of_pruning])
    final = [np.asarray(keras.ops.convert_to_numpy(kernel.value)) == 0
             for kernel in prunable_weights(model)]
    # 54 more steps of momentum, moving averages and slow weights brought none back.
    assert all(np.array_equal(a, b) for a, b in zip(at_end_of_pruning.zeros, final))
    sizes = [12 * 32, 32 * 3]
    assert list(model_sparsity(model)["layers"].values()) == [round(0.8 * n) / n for n in sizes]
    # Stripped: no constraint left, no mask among the optimizer's variables.
    assert all(kernel.constraint is None for kernel in prunable_weights(model))
    assert not any("pruning_mask" in variable.path for variable in model.optimizer.variables)


def test_pruning_takes_hold_after_an_unpruned_fit_and_lets_go_after_its_own():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(2).normal(size=(64, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = small_model(keras.optimizers.Adam(0.05))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # compiles a step without masks
    pruning = MagnitudePruning(final_sparsity=0.5, begin_step=0, end_step=0)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[pruning])
    assert model_sparsity(model)["overall"] == pytest.approx(0.5, abs=1e-3)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # pruning stripped: weights regrow
    assert model_sparsity(model)["overall"] < 0.01


@pytest.mark.slow
def test_a_pruned_model_saves_without_pruning_and_loads_in_plain_keras(tmp_path):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(64, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = small_model(keras.optimizers.Adam(0.01))
    pruning = MagnitudePruning(final_sparsity=0.5, begin_step=0, end_step=0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[pruning])
    path = tmp_path / "pruned.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        assert "efficient_learning" not in archive.read("config.json").decode()
    script = ("import keras, numpy as np, sys; m = keras.saving.load_model(sys.argv[1]); "
              "print(float(np.mean(m.layers[0].kernel.numpy() == 0)))")
    result = run_subprocess(["-c", script, str(path)])  # no project module imported
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) == pytest.approx(0.5)
    restored = MagnitudePruning.from_config(pruning.get_config())
    assert restored.get_config() == pruning.get_config()


@pytest.mark.slow
def test_fit_prunes_on_schedule_and_keeps_the_best_epoch_once_the_network_is_sparse(
        run_cli, runs_dir):
    fit(run_cli, "training.epochs=4", "training.pruning.sparsity=0.75",
        "training.pruning.end_epoch=2", "training.pruning.frequency=5",
        "output.name=pruned", "output.timestamp=false")
    metrics = json.loads((runs_dir / "pruned" / "metrics.json").read_text())
    assert metrics["best"]["epoch"] >= 2
    assert metrics["sparsity"]["overall"] == pytest.approx(0.75, abs=1e-3)
    assert set(metrics["sparsity"]["layers"]) == {"dense_0/kernel", "dense_1/kernel",
                                                  "logits/kernel"}


def test_bad_pruning_settings_are_one_line(run_cli):
    code, _, err = run_cli("fit", "--set", "training.pruning.sparsity=0.5",
                           "--set", "training.pruning.n_of_m=[2, 4]")
    assert code == 2 and err.startswith("error: set training.pruning.sparsity or")
    code, _, err = run_cli("fit", "--set", "training.epochs=3",
                           "--set", "training.pruning.sparsity=0.5",
                           "--set", "training.pruning.end_epoch=5")
    assert code == 2 and "pruning needs begin_epoch < end_epoch <= training.epochs" in err
    code, _, err = run_cli("fit", "--set", "training.pruning.sparsity=0.5",
                           "--set", "training.fine_tune.epochs=2")
    assert code == 2 and "fine-tune first, then prune the run with python -m app prune" in err


@pytest.mark.slow
def test_prune_rewinds_to_the_exact_initial_weights_and_reports_both_runs(run_cli, runs_dir,
                                                                           monkeypatch):
    fit(run_cli, "training.epochs=3", "output.name=dense", "output.timestamp=false")
    starts = []
    train_and_test = app.engine.train_and_test

    def spy(config, dataset, checkpoint_path, start=None, **kwargs):
        def recording_start(model):
            start(model)
            starts.append((config, dataset, [np.array(keras.ops.convert_to_numpy(kernel.value))
                                             for kernel in prunable_weights(model)]))
        return train_and_test(config, dataset, checkpoint_path, start=recording_start, **kwargs)

    monkeypatch.setattr(app.engine, "train_and_test", spy)
    code, out, err = run_cli("prune", str(runs_dir / "dense"), "--sparsity", "0.75",
                             "--rounds", "2", "--rewind", "init", "--epochs", "2")
    assert code == 0, err
    assert len(starts) == 2
    config, dataset, started = starts[1]
    keras.utils.set_random_seed(config.seed)
    fresh = app.engine.build_compiled_model(config, dataset)
    for initial, kernel in zip(prunable_weights(fresh), started):
        initial = np.asarray(keras.ops.convert_to_numpy(initial.value))
        survivors = kernel != 0
        assert np.array_equal(kernel[survivors], initial[survivors])  # bit for bit
        assert np.mean(~survivors) == pytest.approx(0.75, abs=1e-3)
    pruned = runs_dir / "dense-pruned75"
    metrics = json.loads((pruned / "metrics.json").read_text())
    dense = json.loads((runs_dir / "dense" / "metrics.json").read_text())
    assert metrics["pruning"]["dense"]["test_accuracy"] == dense["test"]["accuracy"]
    assert [round(r["sparsity"], 3) for r in metrics["pruning"]["rounds"]] == [0.5, 0.75]
    assert metrics["sparsity"]["overall"] == pytest.approx(0.75, abs=1e-3)
    assert "dense   test accuracy" in out and "75.0% of kernel weights zero" in out
    code, _, err = run_cli("prune", str(runs_dir / "dense"), "--sparsity", "0.5",
                           "--rewind", "epoch:x")
    assert code == 2 and "--rewind must be init or epoch:K" in err


@pytest.mark.slow
def test_a_run_interrupted_while_pruning_resumes_with_its_masks_exactly(run_cli, runs_dir,
                                                                        monkeypatch):
    settings = ("training.epochs=3", "training.pruning.sparsity=0.75",
                "training.pruning.end_epoch=2", "training.pruning.frequency=7",
                "output.timestamp=false")
    fit(run_cli, *settings, "output.name=reference")
    interrupt_at(monkeypatch, 1, 4)  # mid-ramp: masks at an intermediate sparsity
    code, _, err = run_cli(*fit_arguments(*settings, "output.name=run"))
    assert code == 130, err
    monkeypatch.undo()
    code, _, err = run_cli("fit", "--resume", str(runs_dir / "run.partial"))
    assert code == 0, err
    for name in ("history.csv", "metrics.json"):
        reference, resumed = ((runs_dir / run / name).read_text() for run in ("reference", "run"))
        if name == "metrics.json":
            reference, resumed = (
                {key: value for key, value in json.loads(text).items()
                 if key in ("best", "test", "sparsity", "epochs_run")}
                for text in (reference, resumed))
        assert reference == resumed
