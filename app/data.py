"""Datasets: loading, checking, a stratified split, and statistics fitted on training data.

Nothing here imports Keras, so bad data is reported before any backend starts.

```python
dataset = load_dataset(DataConfig(source="digits"), seed=42)
dataset.x_train.shape        # (1257, 8, 8, 1)
dataset.class_names[:3]      # ['0', '1', '2']
dataset.feature_mean.shape   # (1,): one statistic per channel, from x_train only
```
"""

import csv
import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np

from app.errors import UserError

BUNDLED_DATASETS = ("digits", "iris", "wine", "breast_cancer")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# How many file names a report lists before it only counts.
NAMES_SHOWN = 5


@dataclasses.dataclass
class Dataset:
    """A labelled dataset split three ways, with train-only normalisation statistics.

    Attributes:
        x_train, y_train, x_val, y_val, x_test, y_test: float32 features and int32 class
            indices of the three splits.
        train_indices, val_indices, test_indices: positions of each split's samples in the
            source data, for checking that the splits are disjoint.
        class_names: the label of each class index, as text.
        feature_mean, feature_variance: per-feature (tabular) or per-channel (images) mean
            and variance of `x_train` alone.
        fingerprint: a hash of the source features and labels, to recognise the same data.
        description: a one-line description of the source.
        report: what loading and splitting found and did, for `metrics.json`: ignored
            files, skipped images, samples duplicated across splits.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_indices: np.ndarray
    val_indices: np.ndarray
    test_indices: np.ndarray
    class_names: list
    feature_mean: np.ndarray
    feature_variance: np.ndarray
    fingerprint: str
    description: str
    report: dict = dataclasses.field(default_factory=dict)

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self):
        return len(self.class_names)

    def split(self, name):
        """`(features, labels)` of the `"train"`, `"validation"` or `"test"` split."""
        return {"train": (self.x_train, self.y_train), "validation": (self.x_val, self.y_val),
                "test": (self.x_test, self.y_test)}[name]

    def majority_baseline(self):
        """Test accuracy of always predicting the most frequent training class."""
        majority_class = np.bincount(self.y_train, minlength=self.num_classes).argmax()
        return float(np.mean(self.y_test == majority_class))


def load_dataset(data_config, seed):
    """Loads, checks and splits the data that `data_config` describes.

    Args:
        data_config: an `app.config.DataConfig`.
        seed: the seed of the stratified split, unless `data_config.split_seed` is set.

    Returns:
        A `Dataset`.

    Raises:
        UserError: when the data is missing, malformed, empty, has non-finite features,
            fewer than two classes, or too few samples of a class to split.
    """
    report = {}
    features, labels, description = load_arrays(data_config, report)
    class_indices, class_names = encode_labels(labels, description)
    dataset = split_dataset(
        features,
        class_indices,
        class_names,
        validation_fraction=data_config.validation_fraction,
        test_fraction=data_config.test_fraction,
        seed=seed if data_config.split_seed is None else data_config.split_seed,
        description=description,
    )
    dataset.report = {**report, **_handle_duplicates(dataset, data_config.duplicates)}
    return dataset


def load_arrays(data_config, report=None):
    """Reads the features and raw labels of `data_config.source`, checked for sanity.

    Args:
        data_config: an `app.config.DataConfig`.
        report: a dict that receives what an image folder's loading ignored or skipped.

    Returns:
        `(features, labels, description)`: float32 features with samples on axis 0, a 1-D
        array of labels (integers or text), and a one-line description of the source.
    """
    source = data_config.source
    if source in BUNDLED_DATASETS:
        features, labels = _load_bundled(source)
        description = f"scikit-learn {source}"
    else:
        path = Path(source)
        if not path.exists():
            raise UserError(
                f"data.source {source!r} does not exist; give a .npz/.csv file, an image "
                f"folder, or one of {', '.join(BUNDLED_DATASETS)}"
            )
        if path.is_dir():
            features, labels = _load_image_folder(path, data_config,
                                                  {} if report is None else report)
        elif path.suffix.lower() == ".npz":
            features, labels = _load_npz(path, data_config)
        elif path.suffix.lower() == ".csv":
            features, labels = _load_csv(path, data_config)
        else:
            raise UserError(
                f"data.source {source}: unsupported file type {path.suffix!r}; "
                "use .npz, .csv or a folder of images"
            )
        description = str(path)
    _check_arrays(features, labels, description)
    return features, labels, description


def encode_labels(labels, description, class_names=None):
    """Maps raw labels to class indices.

    Args:
        labels: a 1-D array of integer or text labels.
        description: the data source, for error messages.
        class_names: the known classes (e.g. a trained model's), or `None` to take the
            sorted distinct labels.

    Returns:
        `(class_indices, class_names)`: int32 indices and the text of each class.
    """
    texts = np.array([_label_text(label) for label in labels])
    if class_names is None:
        distinct = np.unique(labels)
        class_names = [_label_text(label) for label in distinct]
        if len(class_names) < 2:
            raise UserError(f"{description}: all samples have the label {class_names[0]!r}; "
                            "classification needs at least 2 classes")
    index_of = {name: index for index, name in enumerate(class_names)}
    unknown = sorted(set(texts.tolist()) - set(index_of))
    if unknown:
        raise UserError(
            f"{description}: labels {', '.join(unknown[:5])} are not classes of the model "
            f"({', '.join(class_names[:10])}); use data with the model's classes"
        )
    return np.array([index_of[text] for text in texts], dtype=np.int32), list(class_names)


def split_dataset(features, class_indices, class_names, *, validation_fraction,
                  test_fraction, seed, description):
    """Splits into stratified train/validation/test sets and fits statistics on train."""
    from sklearn.model_selection import train_test_split

    positions = np.arange(len(class_indices))
    counts = np.bincount(class_indices, minlength=len(class_names))
    if counts.min() < 3:
        rare = class_names[int(counts.argmin())]
        raise UserError(
            f"{description}: class {rare!r} has {counts.min()} sample(s); a stratified "
            "train/validation/test split needs at least 3 per class"
        )
    try:
        rest, test = train_test_split(
            positions, test_size=test_fraction, stratify=class_indices, random_state=seed
        )
        train, val = train_test_split(
            rest,
            test_size=validation_fraction / (1.0 - test_fraction),
            stratify=class_indices[rest],
            random_state=seed,
        )
    except ValueError as error:
        raise UserError(
            f"{description}: cannot split {len(positions)} samples of {len(class_names)} "
            f"classes with data.validation_fraction={validation_fraction} and "
            f"data.test_fraction={test_fraction} ({error}); use more data or larger fractions"
        ) from None
    mean, variance = feature_statistics(features[train])
    return Dataset(
        x_train=features[train],
        y_train=class_indices[train],
        x_val=features[val],
        y_val=class_indices[val],
        x_test=features[test],
        y_test=class_indices[test],
        train_indices=train,
        val_indices=val,
        test_indices=test,
        class_names=class_names,
        feature_mean=mean,
        feature_variance=variance,
        fingerprint=fingerprint(features, class_indices),
        description=description,
    )


def feature_statistics(features):
    """Mean and variance over every axis but the last: per feature, or per image channel.

    A constant feature gets variance 1 so that normalising leaves it at 0 instead of
    dividing unseen values by zero.
    """
    axes = tuple(range(features.ndim - 1))
    mean = features.mean(axis=axes, dtype=np.float64)
    variance = features.var(axis=axes, dtype=np.float64)
    variance = np.where(variance < 1e-12, 1.0, variance)
    return mean.astype(np.float32), variance.astype(np.float32)


def fingerprint(features, labels):
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(features).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()[:16]


def _label_text(label):
    if isinstance(label, (bytes, np.bytes_)):
        return label.decode()
    if isinstance(label, (float, np.floating)) and float(label).is_integer():
        return str(int(label))
    return str(label)


def _load_bundled(name):
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    if name == "digits":
        # 8×8 grey-level images: keep the image shape so that a CNN can use it.
        return bunch.images[..., None].astype(np.float32), bunch.target
    return bunch.data.astype(np.float32), bunch.target


def _load_npz(path, data_config):
    if not zipfile.is_zipfile(path):
        # np.load would try a non-zip file as a pickle; say what the file is not instead.
        raise UserError(f"{path} is not a readable .npz archive (not a zip file); "
                        "save it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            missing = [key for key in (data_config.x_key, data_config.y_key) if key not in keys]
            if missing:
                raise UserError(
                    f"{path} has no array {missing[0]!r} (arrays: {', '.join(keys) or 'none'}); "
                    "set data.x_key and data.y_key"
                )
            features = archive[data_config.x_key]
            labels = archive[data_config.y_key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise UserError(f"{path} holds Python objects; save numeric or text arrays "
                            "(pickled data is never loaded)") from None
        raise UserError(f"{path} is not a readable .npz archive: {error}") from None
    except (OSError, EOFError) as error:
        raise UserError(f"{path} is not a readable .npz archive: {error}") from None
    if not np.issubdtype(features.dtype, np.number):
        raise UserError(f"{path}: {data_config.x_key!r} must be numeric; got dtype {features.dtype}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise UserError(f"{path}: {data_config.y_key!r} must be a 1-D array of class labels; "
                        f"got shape {labels.shape} (convert one-hot labels with argmax)")
    if np.issubdtype(labels.dtype, np.floating) and not np.all(np.mod(labels, 1) == 0):
        raise UserError(f"{path}: {data_config.y_key!r} holds non-integer numbers; "
                        "labels must be integers or text")
    return features.astype(np.float32), labels


def _load_csv(path, data_config):
    column = data_config.label_column
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    rows = [row for row in rows if row]
    if not rows:
        raise UserError(f"{path} is empty; a CSV needs a header row and data rows")
    header, body = [name.strip() for name in rows[0]], rows[1:]
    if column not in header:
        raise UserError(
            f"data.label_column {column!r} is not a column of {path} "
            f"(columns: {', '.join(header)}); set data.label_column"
        )
    label_position = header.index(column)
    labels, features = [], []
    for line_number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UserError(f"{path} line {line_number} has {len(row)} fields; "
                            f"the header has {len(header)}")
        labels.append(row[label_position].strip())
        values = row[:label_position] + row[label_position + 1:]
        try:
            features.append([float(value) for value in values])
        except ValueError:
            bad = next(i for i, value in enumerate(values) if not _is_number(value))
            name = [h for i, h in enumerate(header) if i != label_position][bad]
            raise UserError(f"{path} line {line_number}, column {name!r}: {values[bad]!r} "
                            "is not a number") from None
    feature_array = np.array(features, dtype=np.float32).reshape(len(body), len(header) - 1)
    label_array = np.array(labels)
    if all(_is_int(label) for label in labels):
        label_array = label_array.astype(np.int64)
    return feature_array, label_array


def _load_image_folder(path, data_config, report):
    """Decodes every image of a class-per-folder tree; fills `report` with what it left out.

    Hidden files (`.name`, and macOS's `._name`) are ignored silently, other files that are
    not images with a count; an unreadable image, or one over PIL's pixel limit, stops the
    load (`data.on_bad_image: error`) or is skipped and reported (`skip`).
    """
    from PIL import Image, UnidentifiedImageError

    class_folders = sorted(child for child in path.iterdir()
                           if child.is_dir() and not child.name.startswith("."))
    if not class_folders:
        raise UserError(f"image folder {path} has no class subfolders; "
                        "put each class's images in a subfolder named after the class")
    mode = "L" if data_config.color_mode == "grayscale" else "RGB"
    size = tuple(data_config.image_size) if data_config.image_size else None
    images, labels, skipped, ignored = [], [], [], 0
    for folder in class_folders:
        files = [file for file in sorted(folder.iterdir()) if not file.name.startswith(".")]
        candidates = [file for file in files if file.suffix.lower() in IMAGE_SUFFIXES]
        ignored += len(files) - len(candidates)
        if not candidates:
            raise UserError(f"class folder {folder} holds no images; add some or remove the "
                            "folder (every subfolder of an image folder is a class)")
        for file in candidates:
            try:
                pixels = _read_image(file, mode, size)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
                if data_config.on_bad_image == "error":
                    raise UserError(f"{file} {_image_problem(error)}; fix or remove it, or set "
                                    "data.on_bad_image: skip") from None
                skipped.append(str(file.relative_to(path)))
                continue
            if images and pixels.shape != images[0].shape:
                raise UserError(
                    f"{file} is {pixels.shape[1]}×{pixels.shape[0]} but {path}'s first image is "
                    f"{images[0].shape[1]}×{images[0].shape[0]}; set data.image_size: [height, width]"
                )
            images.append(pixels)
            labels.append(folder.name)
    if ignored:
        report["ignored_files"] = ignored
    if skipped:
        report["skipped_images"] = {"count": len(skipped), "first": skipped[:NAMES_SHOWN]}
    if not images:
        raise UserError(f"image folder {path} holds no readable images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    features = np.stack(images)
    if features.ndim == 3:
        features = features[..., None]
    return features, np.array(labels)


def _read_image(file, mode, size):
    from PIL import Image

    with Image.open(file) as image:
        image = image.convert(mode)
        if size is not None:
            image = image.resize((size[1], size[0]))
        return np.asarray(image, dtype=np.float32)


def _image_problem(error):
    from PIL import Image

    if isinstance(error, Image.DecompressionBombError):
        return (f"has more pixels than PIL's limit of {Image.MAX_IMAGE_PIXELS:,} x 2 (a "
                "decompression bomb, or a photo far larger than training needs)")
    return f"is not a readable image ({error})"


def _handle_duplicates(dataset, policy):
    """Finds samples with identical content in two splits, and acts on them by `policy`.

    `warn` reports them, `error` refuses the data, `drop` removes the validation and test
    copies of training samples and the test copies of validation samples.

    Returns:
        What `Dataset.report` records: `{"duplicates_across_splits": {...}}`, or `{}`.
    """
    train, val, test = ([_row_hash(row) for row in rows]
                        for rows in (dataset.x_train, dataset.x_val, dataset.x_test))
    copied_in_val = np.isin(val, train)
    copied_in_test = np.isin(test, train + val)
    if not (copied_in_val.any() or copied_in_test.any()):
        return {}
    found = {"validation": int(copied_in_val.sum()), "test": int(copied_in_test.sum()),
             "policy": policy}
    if policy == "error":
        raise UserError(f"{_copies_text(dataset, found)}; remove the copies, or set "
                        "data.duplicates: drop (or warn)")
    if policy == "drop":
        dataset.x_val, dataset.y_val, dataset.val_indices = (
            array[~copied_in_val] for array in (dataset.x_val, dataset.y_val, dataset.val_indices))
        dataset.x_test, dataset.y_test, dataset.test_indices = (
            array[~copied_in_test]
            for array in (dataset.x_test, dataset.y_test, dataset.test_indices))
    return {"duplicates_across_splits": found}


def report_warnings(dataset):
    """The lines that `dataset.report` is worth a warning for (skipped images, copies left
    in validation or test)."""
    lines = []
    skipped = dataset.report.get("skipped_images")
    if skipped:
        lines.append(f"warning: skipped {skipped['count']} unreadable image(s) of "
                     f"{dataset.description} (first: {', '.join(skipped['first'])})")
    copies = dataset.report.get("duplicates_across_splits")
    if copies and copies["policy"] == "warn":
        lines.append(f"warning: {_copies_text(dataset, copies)}; their scores are not held-out "
                     "scores (data.duplicates: drop removes them, error refuses the data)")
    return lines


def _copies_text(dataset, copies):
    return (f"{dataset.description}: {copies['validation']} validation and {copies['test']} "
            "test sample(s) are identical to samples of an earlier split")


def _row_hash(row):
    return hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).hexdigest()


def _check_arrays(features, labels, description):
    if features.shape[0] == 0:
        raise UserError(f"{description} holds no samples; give a dataset with data in it")
    if features.shape[0] != labels.shape[0]:
        raise UserError(f"{description}: {features.shape[0]} feature rows but "
                        f"{labels.shape[0]} labels; they must match one to one")
    if features.ndim < 2 or features[0].size == 0:
        raise UserError(f"{description}: samples have no features (shape {features.shape})")
    finite = np.isfinite(features)
    if not finite.all():
        bad_rows = np.unique(np.argwhere(~finite)[:, 0])
        raise UserError(
            f"{description}: {len(bad_rows)} sample(s) have NaN or infinite features "
            f"(first at row {bad_rows[0]}); clean or impute them before training"
        )


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_int(text):
    try:
        int(text)
    except ValueError:
        return False
    return True
