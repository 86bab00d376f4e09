import keras
import numpy as np
import pytest
import torch

from callbacks import (CategoricalCrossentropy, SparseCategoricalCrossentropy,
                       categorical_crossentropy, sparse_categorical_crossentropy)


def torch_cross_entropy(logits, labels, smoothing):
    return torch.nn.functional.cross_entropy(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(labels),
        label_smoothing=smoothing, reduction="none",
    ).numpy()


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3, 0.9])
def test_logits_match_torch(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, size=16)
    ours = keras.ops.convert_to_numpy(
        sparse_categorical_crossentropy(labels, logits, from_logits=True, label_smoothing=smoothing))
    np.testing.assert_allclose(ours, torch_cross_entropy(logits, labels, smoothing), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probabilities_match_torch_on_their_log(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(12, 5))
    probabilities = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    labels = rng.integers(0, 5, size=(12, 1))  # a trailing label axis is accepted
    ours = keras.ops.convert_to_numpy(
        sparse_categorical_crossentropy(labels, probabilities, label_smoothing=smoothing))
    reference = torch_cross_entropy(np.log(probabilities.astype(np.float64)), labels[:, 0], smoothing)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)


def test_class_axis_other_than_last():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    labels = rng.integers(0, 6, size=4)
    ours = keras.ops.convert_to_numpy(sparse_categorical_crossentropy(
        labels, logits.T, from_logits=True, label_smoothing=0.1, axis=0))
    np.testing.assert_allclose(ours, torch_cross_entropy(logits, labels, 0.1), rtol=1e-6, atol=1e-6)


def test_zero_smoothing_equals_keras():
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 4, size=8)
    ours = SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_loss_object_reduces_like_keras_and_serializes():
    rng = np.random.default_rng(4)
    logits, labels = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 4, size=8)
    loss = SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    assert float(loss(labels, logits)) == pytest.approx(torch_cross_entropy(logits, labels, 0.1).mean(), rel=1e-6)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, SparseCategoricalCrossentropy)
    assert (clone.label_smoothing, clone.from_logits) == (0.1, True)
    with pytest.raises(ValueError, match="label_smoothing"):
        SparseCategoricalCrossentropy(label_smoothing=1.0)


def test_model_compiled_with_it_saves_and_loads(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", SparseCategoricalCrossentropy(from_logits=True, label_smoothing=0.2))
    model.fit(np.ones((4, 3)), np.array([0, 1, 0, 1]), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.loss.label_smoothing == 0.2


def torch_soft_cross_entropy(logits, targets, smoothing):
    """torch's cross_entropy with class-probability targets, classes on axis 1."""
    return torch.nn.functional.cross_entropy(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64),
        label_smoothing=smoothing, reduction="none",
    ).numpy()


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_one_hot_loss_on_a_middle_class_axis_matches_torch_where_keras_does_not(smoothing):
    # Segmentation-like: (batch, classes, length) with 5 classes and a last axis of 3.
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(6, 5, 3)).astype(np.float32) * 2
    targets = np.moveaxis(np.eye(5, dtype=np.float32)[rng.integers(0, 5, size=(6, 3))], -1, 1)
    reference = torch_soft_cross_entropy(logits, targets, smoothing)
    ours = keras.ops.convert_to_numpy(categorical_crossentropy(
        targets, logits, from_logits=True, label_smoothing=smoothing, axis=1))
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=1))
    from_probabilities = keras.ops.convert_to_numpy(categorical_crossentropy(
        targets, probabilities, label_smoothing=smoothing, axis=1))
    np.testing.assert_allclose(from_probabilities, reference, rtol=1e-5, atol=1e-5)
    keras_values = keras.ops.convert_to_numpy(keras.losses.categorical_crossentropy(
        targets, logits, from_logits=True, label_smoothing=smoothing, axis=1))
    if smoothing:  # Keras 3.15 divides ε by the last axis (3), not the 5 classes
        assert not np.allclose(keras_values, reference, rtol=1e-4)
    else:
        np.testing.assert_allclose(keras_values, reference, rtol=1e-5, atol=1e-5)


def test_one_hot_loss_object_serializes_and_reduces():
    loss = CategoricalCrossentropy(from_logits=True, label_smoothing=0.2, axis=1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert restored.get_config() == loss.get_config()
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 3)).astype(np.float32)
    targets = np.eye(3, dtype=np.float32)[[0, 2, 1, 1]]
    expected = torch_soft_cross_entropy(logits, targets, 0.2).mean()
    assert float(keras.ops.convert_to_numpy(loss(targets, logits))) == pytest.approx(expected, rel=1e-6)
