"""Every schedule equals its `torch.optim.lr_scheduler` counterpart at every step."""

import numpy as np
import pytest
import torch

import keras

import callbacks
from tests.helpers import WeightRecorder, constant_gradient_model

L = torch.optim.lr_scheduler

# (name, our schedule, torch scheduler factory, initial lr given to torch, steps to compare)
CASES = [
    ("step", lambda: callbacks.StepDecay(0.1, step_size=7, gamma=0.5),
     lambda o: L.StepLR(o, 7, 0.5), 0.1, 60),
    ("step-every-step", lambda: callbacks.StepDecay(0.3, step_size=1, gamma=0.9),
     lambda o: L.StepLR(o, 1, 0.9), 0.3, 80),
    ("multistep", lambda: callbacks.MultiStepDecay(0.1, [3, 10, 30], gamma=0.3),
     lambda o: L.MultiStepLR(o, [3, 10, 30], 0.3), 0.1, 50),
    ("multistep-repeated", lambda: callbacks.MultiStepDecay(0.05, [12, 4, 12], gamma=0.5),
     lambda o: L.MultiStepLR(o, [12, 4, 12], 0.5), 0.05, 30),
    ("cosine", lambda: callbacks.CosineAnnealing(0.1, t_max=1000),
     lambda o: L.CosineAnnealingLR(o, 1000), 0.1, 1000),
    ("cosine-floor", lambda: callbacks.CosineAnnealing(2e-3, t_max=37, eta_min=1e-5),
     lambda o: L.CosineAnnealingLR(o, 37, eta_min=1e-5), 2e-3, 37),
    ("restarts", lambda: callbacks.CosineAnnealingWarmRestarts(0.1, t_0=13),
     lambda o: L.CosineAnnealingWarmRestarts(o, 13), 0.1, 300),
    ("restarts-doubling", lambda: callbacks.CosineAnnealingWarmRestarts(0.1, 7, 2, 1e-3),
     lambda o: L.CosineAnnealingWarmRestarts(o, 7, 2, 1e-3), 0.1, 400),
    ("restarts-tripling", lambda: callbacks.CosineAnnealingWarmRestarts(0.02, 3, 3),
     lambda o: L.CosineAnnealingWarmRestarts(o, 3, 3), 0.02, 400),
    ("cyclic", lambda: callbacks.CyclicLR(1e-3, 0.1, step_size_up=10),
     lambda o: L.CyclicLR(o, 1e-3, 0.1, 10), 0.1, 100),
    ("cyclic-asymmetric-2", lambda: callbacks.CyclicLR(1e-4, 1e-2, 5, 3, "triangular2"),
     lambda o: L.CyclicLR(o, 1e-4, 1e-2, 5, 3, "triangular2"), 1e-2, 120),
    ("cyclic-exp-range", lambda: callbacks.CyclicLR(1e-3, 0.1, 50, mode="exp_range", gamma=0.9995),
     lambda o: L.CyclicLR(o, 1e-3, 0.1, 50, mode="exp_range", gamma=0.9995), 0.1, 3000),
    ("one-cycle", lambda: callbacks.OneCycle(0.1, total_steps=1000),
     lambda o: L.OneCycleLR(o, 0.1, 1000), 0.1, 1000),
    ("one-cycle-linear-3", lambda: callbacks.OneCycle(0.1, 97, 0.25, "linear", three_phase=True),
     lambda o: L.OneCycleLR(o, 0.1, 97, pct_start=0.25, anneal_strategy="linear",
                            three_phase=True), 0.1, 97),
    ("one-cycle-cos-3", lambda: callbacks.OneCycle(0.3, 50, 0.4, "cos", 10.0, 100.0, True),
     lambda o: L.OneCycleLR(o, 0.3, 50, pct_start=0.4, div_factor=10, final_div_factor=100,
                            three_phase=True), 0.3, 50),
    ("polynomial", lambda: callbacks.PolynomialDecay(0.1, total_steps=1000),
     lambda o: L.PolynomialLR(o, 1000), 0.1, 1100),
    ("polynomial-cubic", lambda: callbacks.PolynomialDecay(3e-3, 37, power=3.0),
     lambda o: L.PolynomialLR(o, 37, power=3.0), 3e-3, 60),
    ("warmup-cosine", lambda: callbacks.Warmup(callbacks.CosineAnnealing(0.1, 100), 20, 0.1),
     lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 20), L.CosineAnnealingLR(o, 100)],
                              [20]), 0.1, 120),
    ("warmup-constant", lambda: callbacks.Warmup(0.1, 20, start_factor=0.25),
     lambda o: L.LinearLR(o, 0.25, 1.0, 20), 0.1, 60),
    ("warmup-step", lambda: callbacks.Warmup(callbacks.StepDecay(0.05, 9, 0.7), 6, 0.5),
     lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.5, 1.0, 6), L.StepLR(o, 9, 0.7)], [6]),
     0.05, 60),
    ("sequential", lambda: callbacks.SequentialSchedule(
        [callbacks.StepDecay(0.1, 5, 0.5), callbacks.CosineAnnealing(0.1, 30),
         callbacks.MultiStepDecay(0.1, [4])], milestones=[17, 40]),
     lambda o: L.SequentialLR(o, [L.StepLR(o, 5, 0.5), L.CosineAnnealingLR(o, 30),
                                  L.MultiStepLR(o, [4])], [17, 40]), 0.1, 80),
]
IDS = [case[0] for case in CASES]


def torch_rates(make_scheduler, learning_rate, steps):
    """`get_last_lr()` after 0, 1, ..., `steps` calls to `step()`."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=learning_rate,
                                momentum=0.9)  # CyclicLR and OneCycleLR cycle momentum
    scheduler = make_scheduler(optimizer)
    rates = [scheduler.get_last_lr()[0]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    return np.array(rates)


def values(schedule, steps, as_tensor=False):
    def at(step):
        if as_tensor:
            step = keras.ops.convert_to_tensor(step, dtype="int32")
        return float(keras.ops.convert_to_numpy(schedule(step)))

    return np.array([at(step) for step in range(steps + 1)])


def assert_parity(ours, reference):
    # 1e-6 relative; 1e-12 absolute only for the exact zeros at the end of an annealing.
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name, make, make_torch, learning_rate, steps", CASES, ids=IDS)
def test_schedule_equals_torch_at_every_step(name, make, make_torch, learning_rate, steps):
    assert_parity(values(make(), steps), torch_rates(make_torch, learning_rate, steps))


@pytest.mark.parametrize("name, make, make_torch, learning_rate, steps", CASES[::3], ids=IDS[::3])
def test_schedule_takes_integer_tensor_steps(name, make, make_torch, learning_rate, steps):
    assert_parity(values(make(), steps, as_tensor=True),
                  torch_rates(make_torch, learning_rate, steps))


@pytest.mark.parametrize("name, make, make_torch, learning_rate, steps", CASES, ids=IDS)
def test_schedule_round_trips_through_its_config(name, make, make_torch, learning_rate, steps):
    schedule = make()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule)
    np.testing.assert_array_equal(values(restored, 30), values(schedule, 30))


def test_schedules_hold_their_final_value_after_the_end():
    cosine = callbacks.CosineAnnealing(0.1, t_max=10, eta_min=0.01)
    assert values(cosine, 40)[10:] == pytest.approx([0.01] * 31)
    # OneCycleLR steps up to total_steps and raises after; ours holds that last rate.
    one_cycle = callbacks.OneCycle(0.1, total_steps=20)
    last = torch_rates(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.1, 20), 0.1, 20)[-1]
    assert values(one_cycle, 50)[20:] == pytest.approx([last] * 31, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cosine-floor", "restarts-doubling", "cyclic-asymmetric-2",
                                  "one-cycle-cos-3", "warmup-step", "sequential"])
def test_compiled_train_step_applies_the_schedule(name):
    # The optimizer evaluates the schedule at its iteration counter inside the compiled step.
    _, make, make_torch, learning_rate, case_steps = CASES[IDS.index(name)]
    steps = min(40, case_steps)
    model = constant_gradient_model(make())
    recorder = WeightRecorder()
    model.fit(np.ones((1, 1)), np.zeros((1, 1)), batch_size=1, epochs=steps, verbose=0,
              callbacks=[recorder])
    applied = -np.diff(np.array(recorder.weights, dtype=np.float64))
    # Differences of float32 weights: compare to 1e-6 of the peak rate.
    np.testing.assert_allclose(applied, torch_rates(make_torch, learning_rate, steps - 1),
                               rtol=1e-4, atol=1e-6 * learning_rate)


def test_schedule_survives_saving_the_model(tmp_path):
    schedule = callbacks.Warmup(callbacks.OneCycle(0.1, total_steps=50), warmup_steps=5)
    model = constant_gradient_model(schedule)
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    model.fit(np.ones((4, 1)), np.zeros((4, 1)), epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(restored.optimizer._learning_rate, callbacks.Warmup)
    np.testing.assert_allclose(values(restored.optimizer._learning_rate, 60), values(schedule, 60))


@pytest.mark.parametrize("make, message", [
    (lambda: callbacks.StepDecay(0.1, step_size=0), "step_size must be > 0"),
    (lambda: callbacks.CosineAnnealingWarmRestarts(0.1, t_0=10, t_mult=1.5), "t_mult must be an integer"),
    (lambda: callbacks.CyclicLR(1e-3, 0.1, mode="sawtooth"), "mode must be one of"),
    (lambda: callbacks.OneCycle(0.1, total_steps=100, pct_start=1.5), "pct_start must be in"),
    (lambda: callbacks.SequentialSchedule([0.1, 0.01], milestones=[]), "one milestone fewer"),
    (lambda: callbacks.SequentialSchedule([0.1, 0.01, 0.001], [5, 5]), "increasing"),
])
def test_schedules_reject_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
