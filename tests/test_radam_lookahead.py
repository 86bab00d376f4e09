"""RAdam against torch.optim.RAdam, Lookahead against the algorithm on top of torch.optim."""

import keras
import numpy as np
import pytest
import torch

import callbacks
from tests.helpers import START, keras_trajectory, torch_trajectory

RADAM_CASES = {
    "default": (dict(learning_rate=1e-2), lambda p: torch.optim.RAdam(p, lr=1e-2)),
    "beta2-0.99": (dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99),
                   lambda p: torch.optim.RAdam(p, lr=0.05, betas=(0.8, 0.99))),
    # ρ_t crosses 5 at step 6 by less than 1e-3 here (see the test of ρ_t below).
    "beta2-0.9999": (dict(learning_rate=1e-2, beta_2=0.9999),
                     lambda p: torch.optim.RAdam(p, lr=1e-2, betas=(0.9, 0.9999))),
    "decoupled-decay": (dict(learning_rate=1e-2, weight_decay=0.1),
                        lambda p: torch.optim.RAdam(p, lr=1e-2, weight_decay=0.1,
                                                    decoupled_weight_decay=True)),
}


@pytest.mark.parametrize("case", sorted(RADAM_CASES))
@pytest.mark.parametrize("steps", [3, 6, 7, 200])
def test_radam_trajectory_equals_torch(case, steps):
    keras_keys, make_torch = RADAM_CASES[case]
    ours = keras_trajectory(callbacks.RAdam(**keras_keys), steps=steps)
    reference = torch_trajectory(make_torch, steps=steps)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta_2", [0.999, 0.9999])
def test_radam_rho_is_accurate_where_float32_alone_is_not(beta_2):
    optimizer = callbacks.RAdam(beta_2=beta_2)
    rho_infinity = 2 / (1 - beta_2) - 1
    for step in [1, 2, 5, 6, 7, 50, len(optimizer._rho_table) + 10]:
        exact = rho_infinity - 2 * step * beta_2**step / (1 - beta_2**step)
        step_tensor = keras.ops.convert_to_tensor(float(step), dtype="float32")
        bias_correction = -keras.ops.expm1(step_tensor * np.log(beta_2))
        ours = float(keras.ops.convert_to_numpy(optimizer._rho(step_tensor, bias_correction)))
        assert ours == pytest.approx(exact, rel=1e-6), step
    # The closed form in float32 is off by ~1e-3 at step 7 for beta_2 = 0.9999 (4e-4 at 5,
    # rounding ρ_5 = 4.9996 up to the switch point 5.0).
    step = np.float32(7)
    power = 1 - (-np.expm1(step * np.float32(np.log(beta_2))))
    float32_form = np.float32(rho_infinity) - np.float32(2) * step * power / (1 - power)
    exact = rho_infinity - 2 * 7 * beta_2**7 / (1 - beta_2**7)
    assert abs(float32_form - exact) > (1e-5 if beta_2 == 0.9999 else 0)


def torch_lookahead_trajectory(make_inner, sync_period, slow_step_size, steps):
    """Lookahead written out on top of a torch optimizer, as in the paper's Algorithm 1."""
    target = torch.tensor(np.asarray([0.5, -1.0, 2.0, 0.0, 1.5]), dtype=torch.float64)
    scale = torch.arange(1, 6, dtype=torch.float64)
    fast = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    slow = fast.detach().clone()
    inner = make_inner([fast])
    for step in range(1, steps + 1):
        inner.zero_grad()
        ((fast - target) ** 2 * scale).sum().backward()
        inner.step()
        if step % sync_period == 0:
            slow += slow_step_size * (fast.detach() - slow)
            with torch.no_grad():
                fast.copy_(slow)
    return fast.detach().numpy()


def keras_lookahead_trajectory(optimizer, steps):
    target = np.asarray([0.5, -1.0, 2.0, 0.0, 1.5], dtype=np.float32)
    scale = np.arange(1, 6, dtype=np.float32)
    variable = keras.Variable(START.copy())
    for _ in range(steps):
        weights = keras.ops.convert_to_numpy(variable)
        optimizer.apply([keras.ops.convert_to_tensor(2 * (weights - target) * scale)], [variable])
    return keras.ops.convert_to_numpy(variable)


@pytest.mark.parametrize("steps", [4, 5, 12, 50])
@pytest.mark.parametrize("inner", ["sgd-momentum", "adam"])
def test_lookahead_equals_the_algorithm_on_torch(inner, steps):
    if inner == "adam":
        ours = callbacks.Lookahead(keras.optimizers.Adam(0.05, epsilon=1e-8), 5, 0.5)
        make = lambda p: torch.optim.Adam(p, lr=0.05, eps=1e-8)
    else:
        ours = callbacks.Lookahead(keras.optimizers.SGD(0.01, momentum=0.9), 4, 0.8)
        make = lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)
    reference = torch_lookahead_trajectory(make, ours.sync_period, ours.slow_step_size, steps)
    np.testing.assert_allclose(keras_lookahead_trajectory(ours, steps), reference,
                               rtol=1e-5, atol=1e-5)


def test_lookahead_of_radam_trains_saves_and_loads(tmp_path):
    schedule = callbacks.CosineAnnealing(1e-2, t_max=30)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(callbacks.Lookahead(callbacks.RAdam(schedule), sync_period=3), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")
    history = model.fit(x, y, batch_size=16, epochs=5, verbose=0,
                        callbacks=[callbacks.LearningRateMonitor()])
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["learning_rate"][1] == pytest.approx(
        float(keras.ops.convert_to_numpy(schedule(4))), rel=1e-6)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(restored.optimizer, callbacks.Lookahead)
    assert isinstance(restored.optimizer.inner_optimizer, callbacks.RAdam)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sync_period"):
        callbacks.Lookahead(keras.optimizers.SGD(), sync_period=0)
    with pytest.raises(ValueError, match="slow_step_size"):
        callbacks.Lookahead(keras.optimizers.SGD(), slow_step_size=1.5)
    with pytest.raises(ValueError, match="beta_2"):
        callbacks.RAdam(beta_2=1.0)


def test_config_builds_radam_and_lookahead():
    from app.config import load_config
    from app.tables.optimizers import build_optimizer

    config = load_config(overrides=["optimizer.name=radam", "optimizer.beta_2=0.99",
                                    "optimizer.lookahead=true", "optimizer.lookahead_sync_period=6"])
    optimizer = build_optimizer(config.optimizer, config.training, 1e-3)
    assert isinstance(optimizer, callbacks.Lookahead) and optimizer.sync_period == 6
    assert isinstance(optimizer.inner_optimizer, callbacks.RAdam)
    assert optimizer.inner_optimizer.beta_2 == 0.99


def test_lookahead_slow_weights_start_at_the_weights_inside_fit():
    # With a zero learning rate and a sync every update, slow = fast = the initial weights;
    # slow weights that started anywhere else would pull the weights away.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    initial = [np.array(w) for w in model.get_weights()]
    model.compile(callbacks.Lookahead(keras.optimizers.SGD(0.0), sync_period=1), "mse")
    model.fit(np.ones((8, 4)), np.zeros((8, 2)), batch_size=4, epochs=2, verbose=0)
    for before, after in zip(initial, model.get_weights()):
        np.testing.assert_allclose(np.array(after), before, rtol=1e-6, atol=1e-7)
