"""`python -m app doctor`: each check passes on a sound model and fails on a broken one."""

import keras
import numpy as np
import pytest

from app.doctor import _gradients, _initial_loss
from callbacks.gradients import loss_and_gradients
from tests.helpers import WithSpareWeight


@pytest.mark.slow
def test_doctor_passes_the_default_model(run_cli):
    code, out, err = run_cli("doctor", "--set", "model.width=64")
    assert code == 0, out + err
    lines = out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("✓") for line in lines)
    assert "ln(10)" in lines[0] and "overfits one batch of 32" in lines[3]


@pytest.mark.slow
def test_doctor_fails_a_model_that_cannot_learn(run_cli):
    code, out, _ = run_cli("doctor", "--set", "model.width=64", "--set", "schedule.lr=1e-9")
    assert code == 1
    assert out.strip().splitlines()[3].startswith("✗ overfits one batch")
    assert "raise schedule.lr" in out


@pytest.mark.slow
def test_doctor_says_lower_the_rate_when_the_loss_explodes(run_cli):
    code, out, _ = run_cli("doctor", "--set", "model.width=64", "--set", "schedule.lr=1e6")
    assert code == 1
    assert out.strip().splitlines()[3].endswith(
        "the loss grew; lower schedule.lr (or set training.clip_norm)")


def test_gradient_check_names_the_variable_without_gradient():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, WithSpareWeight(name="odd")(inputs))
    model.compile(loss="mse")
    _, gradients = loss_and_gradients(model, np.ones((4, 3)), np.zeros((4, 2)))
    check = _gradients(model, gradients)
    assert not check.ok and "odd/spare" in check.text
    assert str(check).startswith("✗")


def test_initial_loss_check_against_ln_classes():
    assert _initial_loss(2.4, 10).ok
    assert not _initial_loss(9.0, 10).ok
    assert not _initial_loss(float("nan"), 10).ok
