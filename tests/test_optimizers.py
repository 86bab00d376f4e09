"""The configured optimizers and schedules against torch.optim as the reference."""

import keras
import numpy as np
import pytest
import torch

from app.config import OptimizerConfig, ScheduleConfig, TrainingConfig
from app.tables.optimizers import build_optimizer, default_learning_rate
from app.tables.schedules import build_schedule
from tests.helpers import START, keras_trajectory, torch_trajectory

EPS = 1e-7  # Keras's default epsilon; torch's defaults differ, so the reference uses Keras's.
CASES = {
    "sgd": (dict(name="sgd"), {}, 0.05, lambda p: torch.optim.SGD(p, lr=0.05), None),
    "sgd-momentum": (dict(name="sgd", momentum=0.9), {}, 0.01,
                     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), None),
    "sgd-nesterov": (dict(name="sgd", momentum=0.9, nesterov=True), {}, 0.01,
                     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True), None),
    "adagrad": (dict(name="adagrad", initial_accumulator_value=0.1), {}, 0.1,
                lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1, eps=EPS), None),
    "rmsprop": (dict(name="rmsprop", rho=0.9), {}, 0.01,
                lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, eps=EPS), None),
    "adadelta": (dict(name="adadelta", rho=0.9), {}, 1.0,
                 lambda p: torch.optim.Adadelta(p, lr=1.0, rho=0.9, eps=EPS), None),
    "adam": (dict(name="adam", beta_1=0.8), {}, 0.01,
             lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.999), eps=EPS), None),
    "adamw-decay": (dict(name="adamw", weight_decay=0.1), {}, 0.01,
                    lambda p: torch.optim.AdamW(p, lr=0.01, eps=EPS, weight_decay=0.1), None),
    "clip-global-norm": (dict(name="sgd"), {"global_clip_norm": 1.0}, 0.1,
                         lambda p: torch.optim.SGD(p, lr=0.1),
                         lambda q: torch.nn.utils.clip_grad_norm_([q], 1.0)),
    "clip-norm": (dict(name="sgd"), {"clip_norm": 0.5}, 0.1, lambda p: torch.optim.SGD(p, lr=0.1),
                  lambda q: torch.nn.utils.clip_grad_norm_([q], 0.5)),
    "clip-value": (dict(name="adam"), {"clip_value": 0.3}, 0.01,
                   lambda p: torch.optim.Adam(p, lr=0.01, eps=EPS),
                   lambda q: torch.nn.utils.clip_grad_value_([q], 0.3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_steps_equal_torch(case):
    optimizer_keys, training_keys, learning_rate, make_torch, clip = CASES[case]
    optimizer = build_optimizer(OptimizerConfig(**optimizer_keys), TrainingConfig(**training_keys),
                                learning_rate)
    ours = keras_trajectory(optimizer)
    reference = torch_trajectory(make_torch, clip=clip)
    assert np.abs(reference - START).max() > 1e-3  # the run moved the weights
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=2e-6)


def test_unset_learning_rate_is_kerass_default():
    assert default_learning_rate("sgd") == pytest.approx(0.01)
    assert default_learning_rate("adam") == pytest.approx(0.001)


def schedule_values(schedule, steps):
    if isinstance(schedule, float):
        return np.full(steps, schedule)
    return np.array([float(keras.ops.convert_to_numpy(schedule(step))) for step in range(steps)])


def torch_learning_rates(make_scheduler, learning_rate, steps):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate)
    scheduler = make_scheduler(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return np.array(rates)


def test_cosine_schedule_equals_torch_cosine_annealing():
    steps_per_epoch, epochs, lr, floor = 7, 5, 0.1, 0.004
    schedule = build_schedule(ScheduleConfig(name="cosine", lr=lr, min_lr=floor),
                              steps_per_epoch, epochs)
    total = steps_per_epoch * epochs
    reference = torch_learning_rates(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=floor), lr, total + 1)
    np.testing.assert_allclose(schedule_values(schedule, total + 1), reference, rtol=1e-6)


def test_cosine_with_warmup_rises_linearly_then_anneals_over_the_rest():
    steps_per_epoch, epochs, lr = 10, 6, 0.2
    schedule = build_schedule(ScheduleConfig(name="cosine", lr=lr, warmup=1.5), steps_per_epoch, epochs)
    values = schedule_values(schedule, steps_per_epoch * epochs)
    warmup = 15
    np.testing.assert_allclose(values[:warmup], lr * np.arange(warmup) / warmup, rtol=1e-6, atol=1e-9)
    reference = torch_learning_rates(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=60 - warmup), lr, 60 - warmup)
    np.testing.assert_allclose(values[warmup:], reference, rtol=1e-6)


def test_exponential_schedule_equals_torch_per_epoch():
    steps_per_epoch, lr = 4, 0.1
    schedule = build_schedule(ScheduleConfig(name="exponential", lr=lr, gamma=0.7), steps_per_epoch, 5)
    at_epoch_starts = schedule_values(schedule, 5 * steps_per_epoch)[::steps_per_epoch]
    reference = torch_learning_rates(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.7), lr, 5)
    np.testing.assert_allclose(at_epoch_starts, reference, rtol=1e-6)


@pytest.mark.parametrize("unit, per_unit", [("epochs", 9), ("updates", 1)])
def test_step_lengths_are_converted_from_the_unit(unit, per_unit):
    steps_per_epoch, lr = 9, 0.1
    schedule = build_schedule(ScheduleConfig(name="multistep", lr=lr, unit=unit, milestones=[2, 3.5]),
                              steps_per_epoch, 10)
    values = schedule_values(schedule, 90)
    first, second = 2 * per_unit, int(round(3.5 * per_unit))
    assert values[first - 1] == pytest.approx(lr) and values[first] == pytest.approx(lr * 0.1)
    assert values[second - 1] == pytest.approx(lr * 0.1) and values[second] == pytest.approx(lr * 0.01)


def test_config_maps_onto_the_schedule_classes():
    import callbacks

    def build(**keys):
        return build_schedule(ScheduleConfig(lr=0.01, **keys), steps_per_epoch=10, epochs=20)

    one_cycle = build(name="one_cycle", pct_start=0.2)
    assert isinstance(one_cycle, callbacks.OneCycle)
    assert (one_cycle.max_lr, one_cycle.total_steps, one_cycle.pct_start) == (0.01, 200, 0.2)
    cyclic = build(name="cyclic", step_size=2, cyclic_mode="triangular2")
    assert (cyclic.base_lr, cyclic.max_lr, cyclic.step_size_up, cyclic.mode) == (
        pytest.approx(0.001), 0.01, 20, "triangular2")
    restarts = build(name="cosine_restarts", t_0=3, t_mult=2, unit="epochs")
    assert (restarts.t_0, restarts.t_mult) == (30, 2)
    warm_step = build(name="step", step_size=5, warmup=1, warmup_start_factor=0.1)
    assert isinstance(warm_step, callbacks.Warmup) and warm_step.warmup_steps == 10
    assert warm_step.schedule.step_size == 50 and warm_step.start_factor == 0.1


def test_constant_schedule_is_the_learning_rate():
    assert build_schedule(ScheduleConfig(lr=0.03), 10, 3) == 0.03
