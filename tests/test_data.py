import numpy as np
import pytest
from PIL import Image

from app.config import DataConfig
from app.data import feature_statistics, load_dataset, report_warnings
from app.errors import UserError
from tests.helpers import write_npz


def load(source, seed=0, **keys):
    return load_dataset(DataConfig(source=str(source), **keys), seed=seed)


def test_digits_split_sizes_are_stratified_and_disjoint():
    dataset = load("digits", seed=42)
    total = 1797
    assert dataset.input_shape == (8, 8, 1)
    assert dataset.num_classes == 10
    sizes = [len(dataset.y_train), len(dataset.y_val), len(dataset.y_test)]
    assert sum(sizes) == total
    assert sizes[2] == pytest.approx(0.15 * total, abs=1)
    assert sizes[1] == pytest.approx(0.15 * total, abs=1)
    train, val, test = (set(dataset.train_indices), set(dataset.val_indices),
                        set(dataset.test_indices))
    assert not train & test and not val & test and not train & val
    assert len(train | val | test) == total
    # Stratified: every split's class proportions are within one sample of the whole's.
    whole = np.bincount(np.concatenate([dataset.y_train, dataset.y_val, dataset.y_test])) / total
    for labels in (dataset.y_train, dataset.y_val, dataset.y_test):
        assert np.abs(np.bincount(labels, minlength=10) - whole * len(labels)).max() <= 1.0


def test_no_test_sample_leaks_into_train_or_validation_by_content():
    dataset = load("digits", seed=1)
    from sklearn.datasets import load_digits

    images = load_digits().images[..., None].astype(np.float32)
    np.testing.assert_array_equal(dataset.x_test, images[dataset.test_indices])
    np.testing.assert_array_equal(dataset.x_train, images[dataset.train_indices])


def test_split_is_fixed_by_the_seed():
    first, again, other = load("digits", seed=3), load("digits", seed=3), load("digits", seed=4)
    np.testing.assert_array_equal(first.test_indices, again.test_indices)
    assert not np.array_equal(first.test_indices, other.test_indices)


def test_statistics_come_from_the_training_split_only():
    dataset = load("digits", seed=0)
    # Per-channel statistics of an image dataset: one value for grey-level digits.
    assert dataset.feature_mean.shape == (1,)
    np.testing.assert_allclose(dataset.feature_mean, [dataset.x_train.mean()], rtol=1e-5)
    np.testing.assert_allclose(dataset.feature_variance, [dataset.x_train.var()], rtol=1e-4)
    everything = np.concatenate([dataset.x_train, dataset.x_val, dataset.x_test])
    assert abs(dataset.feature_mean[0] - everything.mean()) > 1e-4


def test_constant_features_get_unit_variance():
    mean, variance = feature_statistics(np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32))
    np.testing.assert_allclose(mean, [2.0, 5.0])
    np.testing.assert_allclose(variance, [1.0, 1.0])


def test_npz(tmp_path):
    dataset = load(write_npz(tmp_path / "d.npz", n=60, classes=3, features=4))
    assert dataset.input_shape == (4,)
    assert dataset.class_names == ["0", "1", "2"]
    np.testing.assert_allclose(dataset.feature_mean, dataset.x_train[:].mean(axis=0), rtol=1e-5)


def test_npz_with_text_labels_and_custom_keys(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, features=rng.normal(size=(30, 3)), target=np.array(["cat", "dog", "eel"] * 10))
    dataset = load(path, x_key="features", y_key="target")
    assert dataset.class_names == ["cat", "dog", "eel"]
    assert sorted(set(dataset.y_train.tolist())) == [0, 1, 2]


def test_csv_with_named_label_column(tmp_path):
    path = tmp_path / "d.csv"
    rows = ["a,species,b"] + [f"{i * 0.1},{['x', 'y'][i % 2]},{i % 2}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    dataset = load(path, label_column="species")
    assert dataset.input_shape == (2,)
    assert dataset.class_names == ["x", "y"]
    # The label column is not a feature: column b equals the class index.
    features = np.concatenate([dataset.x_train, dataset.x_val, dataset.x_test])
    labels = np.concatenate([dataset.y_train, dataset.y_val, dataset.y_test])
    np.testing.assert_array_equal(features[:, 1], labels)


def write_images(root, classes=("circle", "square"), per_class=6, size=(10, 12), mode="L"):
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for number in range(per_class):
            pixels = np.full((*size, 3) if mode == "RGB" else size, 40 * index + number, np.uint8)
            Image.fromarray(pixels, mode=None).save(root / name / f"{number}.png")
    return root


def test_image_folder(tmp_path):
    dataset = load(write_images(tmp_path / "images"))
    assert dataset.input_shape == (10, 12, 1)
    assert dataset.class_names == ["circle", "square"]
    assert len(dataset.y_train) + len(dataset.y_val) + len(dataset.y_test) == 12


def test_image_folder_rgb_and_resized(tmp_path):
    root = write_images(tmp_path / "images", size=(9, 9), mode="RGB")
    dataset = load(root, color_mode="rgb", image_size=[4, 6])
    assert dataset.input_shape == (4, 6, 3)
    assert dataset.feature_mean.shape == (3,)


def test_image_folder_of_mixed_sizes_needs_image_size(tmp_path):
    root = write_images(tmp_path / "images")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "circle" / "odd.png")
    with pytest.raises(UserError, match="set data.image_size"):
        load(root)
    assert load(root, image_size=[8, 8]).input_shape == (8, 8, 1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: write_npz(p / "d.npz", x=np.zeros((0, 3)), y=np.zeros(0)), "holds no samples"),
        (lambda p: write_npz(p / "d.npz", y=np.zeros(90)), "at least 2 classes"),
        (lambda p: write_npz(p / "d.npz", y=np.arange(89) % 3), "90 feature rows but 89 labels"),
        (lambda p: write_npz(p / "d.npz", x=np.where(np.eye(90, 5) > 0, np.nan, 1.0)),
         "NaN or infinite features"),
        (lambda p: write_npz(p / "d.npz", y=np.eye(90, 3)), "1-D array of class labels"),
        (lambda p: write_npz(p / "d.npz", y=np.arange(90) % 3 + 0.5), "non-integer numbers"),
        (lambda p: write_npz(p / "d.npz", y=np.array([0, 1] * 44 + [2, 2])), "class '2' has 2 sample"),
        (lambda p: np.savez(p / "d.npz", x=np.array([{}] * 9, dtype=object), y=np.arange(9)),
         "holds Python objects"),
        (lambda p: np.savez(p / "d.npz", data=np.zeros((9, 2))), "has no array 'x'"),
        (lambda p: (p / "d.npz").write_bytes(b"not a zip"), "not a readable .npz"),
        (lambda p: (p / "d.txt").write_text("x"), "unsupported file type '.txt'"),
        (lambda p: (p / "d.csv").write_text(""), "is empty"),
        (lambda p: (p / "d.csv").write_text("a,b\n1,2\n"), "data.label_column 'label' is not a column"),
        (lambda p: (p / "d.csv").write_text("a,label\n1,0\nx,1\n"), "line 3, column 'a': 'x' is not a number"),
        (lambda p: (p / "d.csv").write_text("a,label\n1,0\n1\n"), "line 3 has 1 fields"),
        (lambda p: (p / "images").mkdir(), "has no class subfolders"),
        (lambda p: (p / "images" / "cat").mkdir(parents=True), "holds no images"),
    ],
)
def test_bad_data_is_a_one_line_error(tmp_path, make, message):
    make(tmp_path)
    source = next(path for path in tmp_path.iterdir())
    with pytest.raises(UserError) as raised:
        load(source)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_unreadable_image(tmp_path):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png is not a readable image"):
        load(tmp_path / "images")


def test_missing_source():
    with pytest.raises(UserError, match="does not exist"):
        load("no/such/file.npz")


def test_tiny_split_that_cannot_be_stratified(tmp_path):
    path = write_npz(tmp_path / "d.npz", n=9, classes=3)
    with pytest.raises(UserError, match="cannot split 9 samples of 3 classes"):
        load(path)


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = write_images(tmp_path / "images")
    (root / "triangle").mkdir()
    with pytest.raises(UserError, match=r"class folder .*triangle holds no images; add some"):
        load(root)


def test_hidden_files_are_ignored_and_other_files_counted(tmp_path):
    root = write_images(tmp_path / "images")
    (root / "circle" / ".DS_Store").write_bytes(b"\0\1")
    (root / "circle" / "._0.png").write_bytes(b"AppleDouble, not a png")
    (root / "square" / "notes.txt").write_text("taken on a Tuesday")
    (root / ".cache").mkdir()
    dataset = load(root)
    assert dataset.class_names == ["circle", "square"]
    assert len(dataset.y_train) + len(dataset.y_val) + len(dataset.y_test) == 12
    assert dataset.report == {"ignored_files": 1}


def test_bad_images_stop_the_load_or_are_skipped_and_reported(tmp_path):
    root = write_images(tmp_path / "images", per_class=7)
    (root / "circle" / "3.png").write_bytes(b"truncated")
    (root / "square" / "9.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"3.png is not a readable image .*data.on_bad_image: skip"):
        load(root)
    dataset = load(root, on_bad_image="skip")
    assert len(dataset.y_train) + len(dataset.y_val) + len(dataset.y_test) == 13
    assert dataset.report["skipped_images"] == {"count": 2,
                                                "first": ["circle/3.png", "square/9.png"]}
    assert report_warnings(dataset)[0].startswith("warning: skipped 2 unreadable image(s) of ")


def test_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    root = write_images(tmp_path / "images")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "circle" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 10×12 passes, 40×40 is over twice it
    with pytest.raises(UserError) as raised:
        load(root, image_size=[10, 12])
    assert "huge.png has more pixels than PIL's limit of 500 x 2 (a decompression bomb" in \
        str(raised.value) and "\n" not in str(raised.value)
    assert load(root, image_size=[10, 12], on_bad_image="skip").report["skipped_images"][
        "first"] == ["circle/huge.png"]


def duplicated_npz(path):
    """90 samples made of 45 distinct rows, each twice: copies land in several splits."""
    rows = np.random.default_rng(0).normal(size=(45, 4)).astype(np.float32)
    return write_npz(path, x=np.repeat(rows, 2, axis=0), y=np.repeat(np.arange(45) % 3, 2))


def split_hashes(dataset):
    return [{row.tobytes() for row in rows} for rows in (dataset.x_train, dataset.x_val,
                                                         dataset.x_test)]


def test_copies_across_splits_are_reported_dropped_or_refused(tmp_path):
    path = duplicated_npz(tmp_path / "d.npz")
    warned = load(path)
    train, val, test = split_hashes(warned)
    expected = {"validation": sum(row.tobytes() in train for row in warned.x_val),
                "test": sum(row.tobytes() in train | val for row in warned.x_test)}
    assert expected["validation"] + expected["test"] > 0
    assert warned.report["duplicates_across_splits"] == {**expected, "policy": "warn"}
    assert "are identical to samples of an earlier split" in report_warnings(warned)[0]

    dropped = load(path, duplicates="drop")
    train, val, test = split_hashes(dropped)
    assert not (train & val) and not (train & test) and not (val & test)
    np.testing.assert_array_equal(dropped.x_train, warned.x_train)
    assert len(dropped.y_val) == len(warned.y_val) - expected["validation"]
    assert len(dropped.val_indices) == len(dropped.y_val)

    assert report_warnings(dropped) == []
    with pytest.raises(UserError, match="identical to samples of an earlier split; remove"):
        load(path, duplicates="error")
