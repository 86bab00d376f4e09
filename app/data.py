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
import zipfile
from pathlib import Path

import numpy as np

from app.arrays import LazyRows, MappedArray, map_npz_member, select
from app.errors import UserError
from app.image_folder import load_image_folder
from app.scanning import summarize

BUNDLED_DATASETS = ("digits", "iris", "wine", "breast_cancer")


@dataclasses.dataclass
class Dataset:
    """A labelled dataset split three ways, with train-only normalisation statistics.

    Attributes:
        x_train, y_train, x_val, y_val, x_test, y_test: float32 features and int32 class
            indices of the three splits. The features are NumPy arrays, or, for data
            streamed from files, `app.arrays.LazyRows` that read rows when indexed.
        train_indices, val_indices, test_indices: positions of each split's samples in the
            source data, for checking that the splits are disjoint.
        class_names: the label of each class index, as text.
        feature_mean, feature_variance: per-feature (tabular) or per-channel (images) mean
            and variance of `x_train` alone.
        value_range: the smallest and largest value of `x_train` (augmentation's range).
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
    value_range: tuple
    fingerprint: str
    description: str
    report: dict = dataclasses.field(default_factory=dict)

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def streamed(self):
        """Whether the features are read from files as batches need them."""
        return isinstance(self.x_train, LazyRows)

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
    source = load_arrays(data_config, report)
    class_indices, class_names = encode_labels(source.labels, source.description)
    dataset = split_dataset(
        source,
        class_indices,
        class_names,
        validation_fraction=data_config.validation_fraction,
        test_fraction=data_config.test_fraction,
        seed=seed if data_config.split_seed is None else data_config.split_seed,
    )
    copies = _handle_duplicates(dataset, source.summary.row_hashes, data_config.duplicates)
    dataset.report = {**report, **copies}
    return dataset


@dataclasses.dataclass
class Source:
    """The features and raw labels of a data source, before the split.

    Attributes:
        features: float32 features with samples on axis 0 (an array, or lazily read rows).
        labels: a 1-D array of labels (integers or text).
        description: a one-line description of the source.
        summary: the `app.scanning.Summary` of the features.
    """

    features: object
    labels: np.ndarray
    description: str
    summary: object


def load_arrays(data_config, report=None):
    """Reads the features and raw labels of `data_config.source`, checked for sanity.

    Args:
        data_config: an `app.config.DataConfig`.
        report: a dict that receives what an image folder's loading ignored or skipped.

    Returns:
        A `Source`. The features of an image folder and an uncompressed `.npz` are read
        lazily unless `data.cache` is `memory`.
    """
    source = data_config.source
    summary = None
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
            features, labels, summary = load_image_folder(path, data_config,
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
    _check_shapes(features, labels, description)
    summary = summary or summarize(features)
    _check_finite(summary, description)
    return Source(features, labels, description, summary)


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


def split_dataset(source, class_indices, class_names, *, validation_fraction, test_fraction,
                  seed):
    """Splits a `Source` into stratified train/validation/test sets (by sample, so by file
    for an image folder) and fits statistics on train."""
    from sklearn.model_selection import train_test_split

    description = source.description
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
    mean, variance = source.summary.statistics(train)
    features = source.features
    return Dataset(
        x_train=select(features, train),
        y_train=class_indices[train],
        x_val=select(features, val),
        y_val=class_indices[val],
        x_test=select(features, test),
        y_test=class_indices[test],
        train_indices=train,
        val_indices=val,
        test_indices=test,
        class_names=class_names,
        feature_mean=mean,
        feature_variance=variance,
        value_range=source.summary.value_range(train),
        fingerprint=source.summary.fingerprint(class_indices),
        description=description,
    )


def feature_statistics(features):
    """Mean and variance over every axis but the last: per feature, or per image channel.

    A constant feature gets variance 1 so that normalising leaves it at 0 instead of
    dividing unseen values by zero.
    """
    return summarize(features).statistics(np.arange(len(features)))


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
    """An `.npz`'s features (memory-mapped if stored uncompressed, unless `data.cache` is
    `memory`) and labels."""
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
            mapped = None
            if data_config.cache != "memory":
                mapped = map_npz_member(path, data_config.x_key)
            features = archive[data_config.x_key] if mapped is None else mapped
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
    if isinstance(features, np.memmap):
        return MappedArray(features), labels
    return features.astype(np.float32), labels


def _load_csv(path, data_config):
    column = data_config.label_column
    # utf-8-sig: spreadsheet programs start UTF-8 CSVs with a byte-order mark, which would
    # otherwise become part of the first column's name.
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start} cannot be decoded); "
                        "save it as UTF-8 CSV") from None
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
        label = row[label_position].strip()
        if not label:
            raise UserError(f"{path} line {line_number} has no label (column {column!r} is "
                            "blank); fill it in or remove the row")
        labels.append(label)
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


def _handle_duplicates(dataset, row_hashes, policy):
    """Finds samples with identical content in two splits, and acts on them by `policy`.

    `warn` reports them, `error` refuses the data, `drop` removes the validation and test
    copies of training samples and the test copies of validation samples.

    Returns:
        What `Dataset.report` records: `{"duplicates_across_splits": {...}}`, or `{}`.
    """
    train, val, test = (row_hashes[positions] for positions in
                        (dataset.train_indices, dataset.val_indices, dataset.test_indices))
    copied_in_val = np.isin(val, train)
    copied_in_test = np.isin(test, np.concatenate([train, val]))
    if not (copied_in_val.any() or copied_in_test.any()):
        return {}
    found = {"validation": int(copied_in_val.sum()), "test": int(copied_in_test.sum()),
             "policy": policy}
    if policy == "error":
        raise UserError(f"{_copies_text(dataset, found)}; remove the copies, or set "
                        "data.duplicates: drop (or warn)")
    if policy == "drop":
        dataset.x_val, dataset.y_val, dataset.val_indices = (
            select(array, ~copied_in_val)
            for array in (dataset.x_val, dataset.y_val, dataset.val_indices))
        dataset.x_test, dataset.y_test, dataset.test_indices = (
            select(array, ~copied_in_test)
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


def _check_shapes(features, labels, description):
    if features.shape[0] == 0:
        raise UserError(f"{description} holds no samples; give a dataset with data in it")
    if features.shape[0] != labels.shape[0]:
        raise UserError(f"{description}: {features.shape[0]} feature rows but "
                        f"{labels.shape[0]} labels; they must match one to one")
    if len(features.shape) < 2 or 0 in features.shape[1:]:
        raise UserError(f"{description}: samples have no features (shape {features.shape})")


def _check_finite(summary, description):
    bad_rows = summary.non_finite_rows()
    if len(bad_rows):
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
