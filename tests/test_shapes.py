"""`python -m app make-dataset shapes`: the generated image task, deterministic and readable by
the image-folder loader."""

import hashlib

import numpy as np
import pytest

from app.shapes import CLASSES, render_shape


def digest(folder):
    """A hash of every file's relative path and bytes under `folder`."""
    hasher = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        hasher.update(str(path.relative_to(folder)).encode())
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


def test_an_image_is_a_function_of_its_generator_alone():
    first = render_shape("star", 24, np.random.default_rng([3, 7, 0]))
    again = render_shape("star", 24, np.random.default_rng([3, 7, 0]))
    other = render_shape("star", 24, np.random.default_rng([3, 7, 1]))
    assert first.shape == (24, 24, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 10


def test_each_class_draws_its_own_shape():
    # The same background, clutter and noise draws (the same generator state), ten shapes: the
    # difference between two classes is the shape, so every pair of images differs.
    images = [render_shape(name, 32, np.random.default_rng(0)) for name in CLASSES]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.any(images[i] != images[j]), (CLASSES[i], CLASSES[j])
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        render_shape("blob", 32, np.random.default_rng(0))


def test_make_dataset_writes_a_class_per_folder_tree_deterministically(run_cli, tmp_path):
    arguments = ["--per-class", "4", "--size", "16", "--seed", "5"]
    code, out, err = run_cli("make-dataset", "shapes", str(tmp_path / "a"), *arguments)
    assert code == 0, err
    assert "wrote 40 images of 16×16 pixels in 10 classes" in out
    folders = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert folders == sorted(CLASSES)
    assert all(len(list((tmp_path / "a" / name).glob("*.png"))) == 4 for name in CLASSES)
    run_cli("make-dataset", "shapes", str(tmp_path / "b"), *arguments)
    run_cli("make-dataset", "shapes", str(tmp_path / "c"), *arguments[:-1], "6")
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    # More images per class keep the first ones.
    run_cli("make-dataset", "shapes", str(tmp_path / "d"), "--per-class", "5", *arguments[2:])
    assert (tmp_path / "d/star/star_00003.png").read_bytes() == \
        (tmp_path / "a/star/star_00003.png").read_bytes()


@pytest.mark.parametrize("arguments, message", [
    (["--per-class", "2"], "argument --per-class: must be an integer >= 3"),
    (["--size", "4"], "argument --size: must be an integer >= 8"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0"),
])
def test_bad_arguments_are_one_line_and_write_nothing(run_cli, tmp_path, arguments, message):
    code, out, err = run_cli("make-dataset", "shapes", str(tmp_path / "out"), *arguments)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_is_refused(run_cli, tmp_path):
    (tmp_path / "out").mkdir()
    code, _, err = run_cli("make-dataset", "shapes", str(tmp_path / "out"))
    assert code == 2 and "already exists; choose a new folder" in err


def test_the_image_folder_loader_reads_the_task(run_cli, tmp_path):
    from app.config import load_config
    from app.data import load_dataset

    assert run_cli("make-dataset", "shapes", str(tmp_path / "shapes"), "--per-class", "8",
                   "--size", "12")[0] == 0
    config = load_config(overrides=[f"data.source={tmp_path / 'shapes'}", "data.color_mode=rgb"])
    dataset = load_dataset(config.data, seed=0)
    assert dataset.class_names == sorted(CLASSES) and dataset.input_shape == (12, 12, 3)
    assert len(dataset.y_train) + len(dataset.y_val) + len(dataset.y_test) == 80
