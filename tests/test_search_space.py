"""The `search` section: parsing, checking every candidate value, and drawing trial values."""

import keras_tuner
import pytest

from app.config import load_config, with_values
from app.errors import UserError
from app.config.search_space import Dimension, declare, parse_search_space

ISSUE_EXAMPLE = ("search={schedule.lr: {log_uniform: [1e-4, 1e-1]}, model.width: {choice: "
                 "[64, 128, 256]}, training.label_smoothing: {uniform: [0.0, 0.2]}, "
                 "training.batch_size: {choice: [32, 64]}, model.depth: {int: [1, 3]}}")


def test_a_search_space_parses_into_checked_dimensions():
    config = load_config(overrides=[ISSUE_EXAMPLE, "tuning.objective=val_accuracy"])
    assert parse_search_space(config.search) == [
        Dimension("schedule.lr", "log_uniform", (1e-4, 1e-1)),
        Dimension("model.width", "choice", (64, 128, 256)),
        Dimension("training.label_smoothing", "uniform", (0.0, 0.2)),
        Dimension("training.batch_size", "choice", (32, 64)),
        Dimension("model.depth", "int", (1, 3, 1)),
    ]


@pytest.mark.parametrize("search, message", [
    ("{optimizer.learning_rate: {log_uniform: [1e-4, 1e-1]}}",
     "search.optimizer.learning_rate: config key 'optimizer.learning_rate' is now 'schedule.lr'"),
    ("{model.widht: {choice: [1, 2]}}", "unknown config key 'model.widht'; did you mean 'width'?"),
    ("{data.source: {choice: [digits, iris]}}",
     "search.data.source: only keys of augmentation, model"),
    ("{seed: {choice: [1, 2]}}", "search.seed: only keys of augmentation, model"),
    ("{model: {choice: [1]}}", "model is a section"),
    ("{model.width: [64, 128]}", "search.model.width must be one of {choice: [...]}"),
    ("{model.width: {normal: [0, 1]}}", "search.model.width must be one of"),
    ("{model.width: {choice: []}}", "search.model.width.choice must be a non-empty list"),
    ("{model.width: {choice: [0, 64]}}", "search.model.width: model.width must be >= 1; got 0"),
    ("{model.activation: {choice: [relu, swish]}}", "model.activation must be one of relu"),
    ("{model.width: {choice: [64, 64]}}", "lists a value twice"),
    ("{model.width: {choice: [64, null]}}", "choice cannot contain null"),
    ("{model.width: {uniform: [16, 64]}}", "uniform needs a numeric (float) key; use choice"),
    ("{schedule.lr: {int: [1, 3]}}", "int ranges need an integer key"),
    ("{model.depth: {int: [1.5, 3]}}", "must be [low, high] or [low, high, step] integers"),
    ("{model.depth: {int: [3, 1]}}", "needs low < high; got [3, 1]"),
    ("{schedule.lr: {log_uniform: [0.0, 0.1]}}", "schedule.lr must be > 0.0"),
    ("{training.label_smoothing: {uniform: [0.0, 1.5]}}", "training.label_smoothing must be"),
    ("{schedule.lr: {uniform: [auto, 0.1]}}", "bounds must be numbers"),
    ("{schedule.milestones: {choice: [1, 2]}}", "list-valued keys cannot be searched"),
])
def test_a_bad_search_space_is_a_one_line_error_naming_the_key(search, message):
    with pytest.raises(UserError) as error:
        load_config(overrides=[f"search={search}"])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def draws(dimensions, count):
    """`count` random draws of KerasTuner's samplers from the declared space."""
    space = keras_tuner.HyperParameters()
    declare(space, dimensions)
    for seed in range(count):
        drawn = space.copy()
        for parameter in space.space:
            drawn.values[parameter.name] = parameter.random_sample(seed)
        yield declare(drawn, dimensions)


def test_declared_values_stay_in_their_distributions():
    config = load_config(overrides=[ISSUE_EXAMPLE, "tuning.objective=val_accuracy"])
    dimensions = parse_search_space(config.search)
    for values in draws(dimensions, 50):
        assert 1e-4 <= values["schedule.lr"] <= 1e-1
        assert values["model.width"] in (64, 128, 256)
        assert 0.0 <= values["training.label_smoothing"] <= 0.2
        assert values["model.depth"] in (1, 2, 3)


def test_log_uniform_draws_spread_over_the_decades():
    dimensions = [Dimension("schedule.lr", "log_uniform", (1e-4, 1e-1))]
    rates = [values["schedule.lr"] for values in draws(dimensions, 400)]
    # A log-uniform draw lands in each of the three decades about equally often.
    decades = [sum(low <= rate < low * 10 for rate in rates) for low in (1e-4, 1e-3, 1e-2)]
    assert min(decades) > 80, decades


@pytest.mark.parametrize("key", ["training.label_smoothing", "model.l1", "model.l2"])
def test_keys_that_change_the_loss_need_an_objective_other_than_the_loss(key):
    search = f"search={{{key}: {{uniform: [0.0, 0.1]}}}}"
    with pytest.raises(UserError, match=f"search.{key} changes what val_loss measures"):
        load_config(overrides=[search])
    load_config(overrides=[search, "tuning.objective=val_accuracy"])


def test_trial_values_are_applied_and_validated_like_a_loaded_config():
    config = load_config()
    trial = with_values(config, {"schedule.lr": 0.003, "model.width": 128})
    assert trial.schedule.lr == 0.003 and trial.model.width == 128
    assert config.model.width is None  # the base configuration is unchanged
    with pytest.raises(UserError, match="schedule 'step' needs schedule.step_size"):
        with_values(config, {"schedule.name": "step"})
