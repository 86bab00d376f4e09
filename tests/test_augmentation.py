"""Augmentation: reproducible per batch, MixUp/CutMix against NumPy, soft targets through the
project's loss and accuracy, never inside best.keras, and the preview grid."""

import keras
import numpy as np
import pytest
import torch

from app.augmentation import Augmenter, build_augmenter
from app.config import AugmentationConfig, load_config
from app.data import load_dataset
from app.errors import UserError
from callbacks import soft_target_accuracy, sparse_categorical_crossentropy
from tests.helpers import fit, only_run


@pytest.fixture(scope="module")
def digits():
    return load_dataset(load_config().data, seed=0)


def one_of_each_class(dataset):
    """The first training sample of each of the ten classes, as `(x, y)`."""
    picks = [int(np.flatnonzero(dataset.y_train == label)[0]) for label in range(10)]
    return dataset.x_train[picks], dataset.y_train[picks]


def augmenter_for(dataset, seed=0, **keys):
    return build_augmenter(AugmentationConfig(**keys), dataset, seed)


@pytest.mark.slow
def test_every_key_builds_and_each_batch_seed_repeats_exactly(digits):
    augmenter = augmenter_for(digits, flip="horizontal", rotation=0.1, translation=0.1, zoom=0.1,
                              contrast=0.2, brightness=0.2, noise=0.05, erasing=0.5,
                              randaugment=0.5, mixup=0.2, cutmix=1.0)
    x, y = digits.x_train[:32], digits.y_train[:32]
    first, targets = augmenter(x, y, seed=(0, 1, 2))
    again, same_targets = augmenter(x, y, seed=(0, 1, 2))
    other, _ = augmenter(x, y, seed=(0, 1, 3))
    assert first.shape == x.shape and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(targets, same_targets)
    assert np.abs(first - other).max() > 1.0
    assert targets.shape == (32, 10)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)


def test_a_flip_is_a_mirror_image_and_leaves_labels_alone(digits):
    augmenter = augmenter_for(digits, flip="horizontal")
    x, y = digits.x_train[:64], digits.y_train[:64]
    flipped, labels = augmenter(x, y, seed=(1, 0, 0))
    mirrored = np.all(flipped == x[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(flipped == x, axis=(1, 2, 3))
    assert np.all(mirrored | kept) and 10 < mirrored.sum() < 54  # about half of them
    np.testing.assert_array_equal(labels, y)


def test_mixup_matches_numpy(digits):
    """Each output is λ·x_i + (1 − λ)·x_j with the target λ·e_{y_i} + (1 − λ)·e_{y_j}:
    λ and j are read off the targets (one sample per class), the images checked with NumPy."""
    augmenter = augmenter_for(digits, mixup=0.4)
    x, y = one_of_each_class(digits)
    images, targets = augmenter(x, y, seed=(5, 0, 0))
    own = targets[np.arange(10), y]
    partner = np.where(own < 1.0 - 1e-6,
                       np.argmax(np.where(np.eye(10, dtype=bool)[y], -1.0, targets), axis=1),
                       np.arange(10))
    expected = own[:, None, None, None] * x + (1.0 - own[:, None, None, None]) * x[partner]
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-4)
    assert (own < 0.99).sum() >= 3  # Beta(0.4, 0.4) mixes most samples noticeably


def test_mixup_weights_follow_the_beta_distribution(digits):
    """MixUp's per-sample weights λ, read off the targets over 40 batches, pass a
    Kolmogorov-Smirnov test against SciPy's Beta(α, α)."""
    from scipy import stats

    alpha = 0.4
    augmenter = augmenter_for(digits, mixup=alpha)
    x, y = one_of_each_class(digits)
    weights = []
    for batch in range(40):
        _, targets = augmenter(x, y, seed=(0, 0, batch))
        own = targets[np.arange(10), y]
        weights.extend(own[own < 1.0 - 1e-6])  # a sample mixed with itself shows no weight
    assert len(weights) > 300
    assert stats.kstest(weights, stats.beta(alpha, alpha).cdf).pvalue > 0.01


def test_mixing_leaves_torchs_global_generator_alone(digits, monkeypatch):
    """Keras's PyTorch `beta` seeds and restores torch's global generator; reading threads
    doing that race with the training thread's dropout and with a resume setting it."""
    touched = []
    monkeypatch.setattr(torch, "manual_seed", lambda *args: touched.append("manual_seed"))
    monkeypatch.setattr(torch.random, "set_rng_state",
                        lambda *args: touched.append("set_rng_state"))
    augmenter = augmenter_for(digits, mixup=0.2, cutmix=1.0)
    for batch in range(4):
        augmenter(digits.x_train[:8], digits.y_train[:8], seed=(0, 0, batch))
    assert touched == []


def test_cutmix_label_weights_are_the_pasted_area(digits):
    """Constant images show which pixels came from where; the target's weight on the own
    class is the share of own pixels, up to the box's edge pixels."""
    augmenter = augmenter_for(digits, cutmix=1.0)
    size = 32
    x = np.repeat(np.arange(10, dtype=np.float32) * 10.0, size * size).reshape(10, size, size, 1)
    y = np.arange(10)
    images, targets = augmenter(x, y, seed=(9, 0, 0))
    own_pixels = (images == x).mean(axis=(1, 2, 3))
    edge = 2.0 * (size + 1) / size**2
    np.testing.assert_allclose(targets[np.arange(10), y], own_pixels, atol=edge)
    for index in range(10):  # the rest is one other image's pixels, matching the target
        pasted = np.unique(images[index][images[index] != x[index]])
        if len(pasted):
            assert len(pasted) == 1
            assert targets[index, int(pasted[0] // 10)] == pytest.approx(1 - own_pixels[index],
                                                                         abs=edge)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_soft_targets_loss_matches_torch_and_numpy(smoothing):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(8, 5)).astype(np.float32) * 2
    weights = rng.uniform(size=8)
    first, second = rng.integers(0, 5, 8), rng.integers(0, 5, 8)
    targets = (weights[:, None] * np.eye(5)[first]
               + (1 - weights[:, None]) * np.eye(5)[second]).astype(np.float32)
    ours = keras.ops.convert_to_numpy(sparse_categorical_crossentropy(
        targets, logits, from_logits=True, label_smoothing=smoothing))
    reference = torch.nn.functional.cross_entropy(
        torch.tensor(logits, dtype=torch.float64), torch.tensor(targets, dtype=torch.float64),
        label_smoothing=smoothing, reduction="none").numpy()
    log_probabilities = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    smoothed = targets * (1 - smoothing) + smoothing / 5
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, -(smoothed * log_probabilities).sum(axis=1), rtol=1e-5,
                               atol=1e-5)


def test_soft_target_accuracy_counts_the_heaviest_class():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    soft = np.array([[0.6, 0.0, 0.4], [0.7, 0.3, 0.0], [0.2, 0.0, 0.8]], dtype=np.float32)
    assert keras.ops.convert_to_numpy(soft_target_accuracy(soft, logits)).tolist() == [1, 0, 0]
    labels = np.array([0, 1, 2])
    assert keras.ops.convert_to_numpy(soft_target_accuracy(labels, logits)).tolist() == [1, 1, 0]


def test_augmentation_needs_images():
    iris = load_dataset(load_config(overrides=["data.source=iris"]).data, seed=0)
    with pytest.raises(UserError, match="augmentation needs images"):
        augmenter_for(iris, mixup=0.2)


def test_an_augmenter_without_layers_changes_nothing():
    x = np.ones((4, 3, 3, 1), np.float32)
    images, labels = Augmenter([], [], num_classes=2)(x, np.array([0, 1, 0, 1]), seed=(0,))
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, [0, 1, 0, 1])


@pytest.mark.slow
def test_augmented_training_keeps_augmentation_out_of_best_keras(run_cli, runs_dir):
    fit(run_cli, "model.architecture=cnn", "training.epochs=2", "augmentation.flip=horizontal",
        "augmentation.rotation=0.05", "augmentation.mixup=0.2", "augmentation.cutmix=0.5",
        "augmentation.erasing=0.3")
    run = only_run(runs_dir)
    model = keras.saving.load_model(run / "best.keras")
    names = {type(layer).__name__ for layer in model._flatten_layers()}
    augmenting = {name for name in names
                  if name.startswith("Random") or name in ("MixUp", "CutMix", "RandAugment")}
    assert not augmenting, augmenting
    x = load_dataset(load_config().data, seed=42).x_test[:16]
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))


def test_augment_preview_writes_a_png(run_cli, tmp_path):
    output = tmp_path / "grid.png"
    code, out, err = run_cli("augment-preview", "--set", "augmentation.rotation=0.1",
                             "--set", "augmentation.mixup=0.3", "--images", "3", "--draws", "2",
                             "--output", str(output))
    assert code == 0, err
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [path.name for path in tmp_path.iterdir() if "partial" in path.name] == []
    code, _, err = run_cli("augment-preview", "--output", str(tmp_path / "none.png"))
    assert code == 2 and "augmentation section changes nothing" in err


def test_threads_augment_in_parallel_and_each_batch_stays_reproducible(digits):
    import concurrent.futures

    augmenter = augmenter_for(digits, rotation=0.1, translation=0.1, noise=0.05, mixup=0.2)
    x, y = digits.x_train[:16], digits.y_train[:16]
    seeds = [(0, 0, index) for index in range(6)]
    serial = [augmenter(x, y, seed=seed) for seed in seeds]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(lambda seed: augmenter(x, y, seed=seed), seeds))
    for (images, targets), (again, same_targets) in zip(serial, parallel):
        np.testing.assert_array_equal(images, again)
        np.testing.assert_array_equal(targets, same_targets)
