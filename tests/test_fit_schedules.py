"""`fit` with each schedule, plateau reduction and `schedule.lr: auto`; `lr-find` end to end."""

import json

import keras
import numpy as np
import pytest
import yaml

from app.config import load_config
from app.data import load_dataset
from app.tables.schedules import build_schedule
from app.reporting import read_history_csv
from app.engine import steps_per_epoch
from tests.helpers import fit, only_run

EPOCHS = 4
SCHEDULES = {
    "step": ["schedule.step_size=1", "schedule.gamma=0.5"],
    "multistep": ["schedule.milestones=[1, 3]", "schedule.warmup=0.5"],
    "exponential": ["schedule.gamma=0.8"],
    "cosine": ["schedule.min_lr=1e-5", "schedule.warmup=1", "schedule.warmup_start_factor=0.1"],
    "polynomial": ["schedule.power=2.0", "schedule.warmup=1"],
    "cosine_restarts": ["schedule.t_0=15", "schedule.t_mult=2", "schedule.unit=updates"],
    "cyclic": ["schedule.step_size=1.5", "schedule.cyclic_mode=triangular2"],
    "one_cycle": ["schedule.pct_start=0.25", "schedule.three_phase=true"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_fit_with_each_schedule_logs_its_rates(name, run_cli, runs_dir):
    overrides = [f"schedule.name={name}", "schedule.lr=0.004", f"training.epochs={EPOCHS}",
                 "early_stopping.enabled=false", *SCHEDULES[name]]
    fit(run_cli, *overrides)
    run = only_run(runs_dir)
    logged = read_history_csv(run / "history.csv")["learning_rate"]
    np.testing.assert_allclose(logged, scheduled_rates(run), rtol=1e-6)
    assert len(set(np.round(logged, 12))) > 1  # the rate did change


def scheduled_rates(run):
    """The rate of each epoch's first update, rebuilt from the run's `config.yaml`."""
    config = load_config(run / "config.yaml")
    dataset = load_dataset(config.data, seed=config.seed)
    per_epoch = steps_per_epoch(config, dataset)
    schedule = build_schedule(config.schedule, per_epoch, config.training.epochs)
    return [float(keras.ops.convert_to_numpy(schedule(epoch * per_epoch)))
            for epoch in range(config.training.epochs)]


@pytest.mark.slow
def test_plateau_reduces_a_scheduled_rate_in_fit(run_cli, runs_dir):
    # patience 0 and a threshold no epoch can beat: epoch 1 sets the best, and every epoch
    # from the second on reduces the rate of the next one.
    fit(run_cli, "schedule.name=cosine", "schedule.lr=0.01", "training.epochs=4",
        "early_stopping.enabled=false", "schedule.plateau.enabled=true",
        "schedule.plateau.patience=0", "schedule.plateau.factor=0.5",
        "schedule.plateau.threshold=0.99")
    run = only_run(runs_dir)
    logged = read_history_csv(run / "history.csv")["learning_rate"]
    raw = scheduled_rates(run)
    np.testing.assert_allclose(logged, [raw[0], raw[1], raw[2] / 2, raw[3] / 4], rtol=1e-6)
    # best.keras holds the optimizer with its ScaledSchedule, and loads again.
    code, out, err = run_cli("evaluate", str(run))
    assert code == 0, err


@pytest.mark.slow
def test_fit_with_auto_learning_rate_runs_the_finder_first(run_cli, runs_dir):
    out = fit(run_cli, "schedule.lr=auto", "schedule.name=one_cycle", "training.epochs=3")
    run = only_run(runs_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    suggestion = metrics["lr_finder"]["suggestion"]
    assert 1e-6 < suggestion < 1.0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["schedule"]["lr"] == pytest.approx(suggestion)
    assert {"lr_find.png", "lr_find.csv", "lr_find.json"} <= {p.name for p in run.iterdir()}
    assert "LR finder" in out


def test_lr_find_command_writes_curve_and_suggestion(run_cli, runs_dir):
    code, out, err = run_cli("lr-find", "--steps", "30", "--max-lr", "1",
                             "--set", "training.verbose=0", "--set", "output.name=probe")
    assert code == 0, err
    run = only_run(runs_dir)
    assert run.name.startswith("probe-lr-find-")
    summary = json.loads((run / "lr_find.json").read_text())
    assert summary["rule"] == "valley" and summary["sweep"]["steps_run"] <= 30
    assert set(summary["suggestions"]) == {"valley", "steepest", "minimum"}
    rows = (run / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "step,learning_rate,loss,smoothed_loss" and len(rows) == summary["sweep"]["steps_run"] + 1
    assert (run / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert f"schedule.lr={summary['suggestion']:.3g}" in out


@pytest.mark.slow
def test_accumulation_counts_updates_for_the_schedule(run_cli, runs_dir):
    # 1257 samples in batches of 16 are 79 batches, 20 updates of 4 (the last one partial) per
    # epoch; a step schedule of one epoch halves the rate exactly at each epoch boundary.
    fit(run_cli, "training.epochs=3", "training.batch_size=16", "training.accumulation_steps=4",
        "schedule.name=step", "schedule.step_size=1", "schedule.gamma=0.5", "schedule.lr=0.004",
        "early_stopping.enabled=false")
    logged = read_history_csv(only_run(runs_dir) / "history.csv")["learning_rate"]
    np.testing.assert_allclose(logged, [0.004, 0.002, 0.001], rtol=1e-6)


@pytest.mark.slow
def test_accumulation_schedule_runs(run_cli, runs_dir):
    fit(run_cli, "training.epochs=2", "training.accumulation_schedule=[[1, 1], [2, 4]]")
    assert len(read_history_csv(only_run(runs_dir) / "history.csv")["loss"]) == 2


@pytest.mark.slow
def test_adaptive_accumulation_follows_the_noise_scale_in_fit(run_cli, runs_dir):
    fit(run_cli, "training.epochs=2", "training.noise_scale=true",
        "training.accumulation_adaptive=true")
    history = read_history_csv(only_run(runs_dir) / "history.csv")
    expected = max(1, min(64, round(history["noise_scale"][0] / 64)))
    assert history["accumulation_steps"][0] == expected
