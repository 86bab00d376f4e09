"""Streamed data: image folders decoded per batch, memory-mapped .npz, caches, `Batches`."""

import dataclasses
import json
import os

import numpy as np
import pytest

from app.arrays import ImageFiles, MappedArray
from app.config import DataConfig, load_config
from app.data import load_dataset
from app.feeding import Batches, SetEpoch, evaluation_inputs, fit_inputs
from app.shapes import write_shapes
from tests.helpers import BACKEND, fit, only_run


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    """The generated task: 10 classes, 9 images each, 12×12 RGB."""
    root = tmp_path_factory.mktemp("data") / "shapes"
    root.mkdir()
    write_shapes(root, per_class=9, size=12, seed=0)
    return root


def load(root, cache, tmp_path=None, **keys):
    config = DataConfig(source=str(root), color_mode="rgb", cache=cache,
                        cache_dir=str(tmp_path / "cache") if tmp_path else None, **keys)
    return load_dataset(config, seed=3)


@pytest.mark.parametrize("cache", ["none", "disk"])
def test_streamed_splits_counts_classes_and_statistics_equal_in_memory(shapes_folder, tmp_path,
                                                                       cache):
    memory = load(shapes_folder, "memory")
    streamed = load(shapes_folder, cache, tmp_path)
    assert isinstance(memory.x_train, np.ndarray) and not memory.streamed
    assert streamed.streamed
    assert isinstance(streamed.x_train, ImageFiles if cache == "none" else MappedArray)
    assert streamed.class_names == memory.class_names
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(streamed, f"{split}_indices"),
                                      getattr(memory, f"{split}_indices"))
        np.testing.assert_array_equal(getattr(streamed, f"y_{split}"),
                                      getattr(memory, f"y_{split}"))
        assert getattr(streamed, f"x_{split}").shape == getattr(memory, f"x_{split}").shape
    np.testing.assert_array_equal(streamed.x_val[:], memory.x_val)
    np.testing.assert_array_equal(streamed.x_train[[4, 0]], memory.x_train[[4, 0]])
    assert streamed.fingerprint == memory.fingerprint
    assert streamed.value_range == memory.value_range
    np.testing.assert_allclose(streamed.feature_mean, memory.feature_mean, rtol=1e-6)
    np.testing.assert_allclose(streamed.feature_variance, memory.feature_variance, rtol=1e-6)
    # And the statistics are the training split's, computed directly.
    np.testing.assert_allclose(memory.feature_mean, memory.x_train.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(memory.feature_variance, memory.x_train.var(axis=(0, 1, 2)),
                               rtol=1e-4)


def test_the_disk_cache_is_reused_until_a_file_changes(shapes_folder, tmp_path):
    first = load(shapes_folder, "disk", tmp_path)
    caches = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(caches) == 1 and not list((tmp_path / "cache").glob("*.partial"))
    cached = np.load(caches[0], mmap_mode="r")
    assert cached.dtype == np.uint8  # a quarter of float32's size
    written = caches[0].stat().st_mtime_ns
    again = load(shapes_folder, "disk", tmp_path)
    assert caches[0].stat().st_mtime_ns == written
    assert again.fingerprint == first.fingerprint
    index = json.loads(caches[0].with_suffix(".json").read_text())
    assert len(index["kept"]) == 90
    # A changed file is a new cache: the old one cannot stand for the folder.
    victim = sorted((shapes_folder / "star").iterdir())[0]
    status = victim.stat()
    os.utime(victim, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    load(shapes_folder, "disk", tmp_path)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_a_skipped_image_is_left_out_of_every_cache_alike(shapes_folder, tmp_path):
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(shapes_folder, root)
    (root / "ring" / "broken.png").write_bytes(b"not a png")
    datasets = [load(root, cache, tmp_path, on_bad_image="skip")
                for cache in ("none", "memory", "disk", "disk")]
    for dataset in datasets:
        assert dataset.report["skipped_images"] == {"count": 1, "first": ["ring/broken.png"]}
        assert len(dataset.y_train) + len(dataset.y_val) + len(dataset.y_test) == 90
        assert dataset.fingerprint == datasets[0].fingerprint


def test_uncompressed_npz_is_memory_mapped_and_compressed_is_read(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(60, 6, 5, 3)).astype(np.uint8)
    y = np.arange(60) % 3
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    plain = load_dataset(DataConfig(source=str(tmp_path / "plain.npz")), seed=0)
    packed = load_dataset(DataConfig(source=str(tmp_path / "packed.npz")), seed=0)
    in_memory = load_dataset(DataConfig(source=str(tmp_path / "plain.npz"), cache="memory"), seed=0)
    assert isinstance(plain.x_train, MappedArray) and isinstance(plain.x_train.array, np.memmap)
    assert isinstance(packed.x_train, np.ndarray) and isinstance(in_memory.x_train, np.ndarray)
    np.testing.assert_array_equal(plain.x_test[:], x[plain.test_indices].astype(np.float32))
    assert plain.fingerprint == packed.fingerprint == in_memory.fingerprint


def test_batches_shuffle_by_seed_and_epoch_and_cover_every_sample_once():
    features = np.arange(10, dtype=np.float32)[:, None]
    labels = np.arange(10)
    batches = Batches(features, labels, batch_size=4, seed=7)
    assert batches.num_batches == 3

    def epoch():
        seen = [batches[index] for index in range(batches.num_batches)]
        batches.on_epoch_end()
        return np.concatenate([x[:, 0] for x, _ in seen]), np.concatenate([y for _, y in seen])

    first_x, first_y = epoch()
    second_x, _ = epoch()
    np.testing.assert_array_equal(first_x, first_y)  # features stay with their labels
    assert sorted(first_x) == list(range(10)) and sorted(second_x) == list(range(10))
    assert not np.array_equal(first_x, second_x)
    replay = Batches(features, labels, batch_size=4, seed=7)
    np.testing.assert_array_equal(replay[0][1], first_y[:4])
    ordered = Batches(features, labels, batch_size=4)
    np.testing.assert_array_equal(ordered[2][1], [8, 9])


def test_each_epoch_reads_its_own_order_though_keras_peeks_at_a_batch_first():
    """Keras's first `fit` reads a batch to build the model and ends that pass as an epoch;
    `SetEpoch` keeps epoch 0's shuffle and augmentation for the real epoch 0."""
    import keras

    class Recorded(Batches):
        def __getitem__(self, index):
            reads.append((self.epoch, index))
            return super().__getitem__(index)

    reads = []
    x = np.arange(16, dtype=np.float32).reshape(8, 2)
    batches = Recorded(x, np.arange(8) % 2, batch_size=4, seed=3)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(batches, epochs=2, shuffle=False, callbacks=[SetEpoch(batches)], verbose=0)
    assert sorted(set(reads)) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_validation_and_test_batches_are_never_augmented(shapes_folder):
    config = load_config(overrides=["augmentation.flip=both", "training.batch_size=8"])
    dataset = load(shapes_folder, "none")
    marker = object()
    inputs = fit_inputs(dataset, config, augmenter=marker)
    assert inputs["x"].augmenter is marker
    assert inputs["validation_data"].augmenter is None
    assert evaluation_inputs(dataset.x_test, dataset.y_test, config)["x"].augmenter is None
    # In memory without augmentation, `Batches` reads the arrays themselves, in the seed's
    # order, not augmented (TensorFlow reads them in its graph, in that order: see below).
    memory = load(shapes_folder, "memory")
    in_memory = fit_inputs(memory, config)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        assert isinstance(in_memory["x"], tf.data.Dataset)
        assert in_memory["callbacks"][0].batches.features is memory.x_train
    else:
        assert in_memory["x"].features is memory.x_train and in_memory["x"].augmenter is None


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow reads arrays in its graph")
def test_tensorflow_copies_no_large_split_into_its_graph(shapes_folder, monkeypatch):
    from app import feeding

    memory = load(shapes_folder, "memory")
    config = load_config(overrides=["training.batch_size=8"])
    monkeypatch.setattr(feeding, "GRAPH_COPY_LIMIT_BYTES", memory.x_train.nbytes - 1)
    assert fit_inputs(memory, config)["x"].features is memory.x_train  # `Batches`, no copy


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow reads arrays in its graph")
@pytest.mark.parametrize("first_batch", [0, 2])
def test_tensorflow_reads_the_batches_of_arrays_in_its_graph_in_their_order(first_batch):
    from app.graph_batches import graph_batches

    features = np.arange(22, dtype=np.float64).reshape(11, 2)  # cast to float32, as `Batches`
    batches = Batches(features, np.arange(11), 4, seed=3, epoch=2, first_batch=first_batch)
    expected = Batches(features, np.arange(11), 4, seed=3, epoch=2, first_batch=first_batch)
    dataset, order = graph_batches(batches)
    set_epoch = SetEpoch(batches, order)
    assert dataset.cardinality() == expected.num_batches
    for epoch in (2, 3, 7):
        set_epoch.on_epoch_begin(epoch)
        expected.set_epoch(epoch)
        read = [(x.numpy(), y.numpy()) for x, y in dataset]
        assert len(read) == expected.num_batches
        for index, (x, y) in enumerate(read):
            assert x.dtype == np.float32
            np.testing.assert_array_equal(x, expected[index][0])
            np.testing.assert_array_equal(y, expected[index][1])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow reads arrays in its graph")
def test_fit_on_batches_read_in_the_graph_trains_as_on_batches_read_by_keras():
    """Several steps per call, a short last call and a short last batch: the same weights as
    Keras reading `Batches` through Python."""
    import keras

    config = load_config(overrides=["training.batch_size=8", "seed=4"])
    digits = load_dataset(config.data, seed=0)
    features, labels = digits.x_train[:85], digits.y_train[:85]  # 11 batches, the last of 5

    def trained(inputs):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dropout(0.3), keras.layers.Dense(10)])
        model.compile(optimizer="adam", steps_per_execution=4, loss=keras.losses.
                      SparseCategoricalCrossentropy(from_logits=True))
        model.fit(**inputs, epochs=3, verbose=0)
        return model.get_weights()

    dataset = dataclasses.replace(digits, x_train=features, y_train=labels)
    in_graph = {key: value for key, value in fit_inputs(dataset, config).items()
                if not key.startswith("validation")}
    by_keras = Batches(features, labels, 8, seed=4)
    reference = trained({"x": by_keras, "shuffle": False, "callbacks": [SetEpoch(by_keras)]})
    for ours, theirs in zip(trained(in_graph), reference):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.slow
def test_fit_streams_an_image_folder(shapes_folder, run_cli, runs_dir):
    fit(run_cli, f"data.source={shapes_folder}", "data.color_mode=rgb", "model.architecture=cnn",
        "training.epochs=2", "data.workers=2")
    run = only_run(runs_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    memory = load(shapes_folder, "memory")
    memory_split = load_dataset(DataConfig(source=str(shapes_folder), color_mode="rgb",
                                           cache="memory"), seed=42)
    assert metrics["samples"] == {"train": len(memory_split.y_train),
                                  "validation": len(memory_split.y_val),
                                  "test": len(memory_split.y_test)}
    assert metrics["data_fingerprint"] == memory.fingerprint
    assert json.loads((run / "classes.json").read_text()) == memory.class_names
