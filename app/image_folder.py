"""Image folders: one subfolder per class, listed, checked and summarised in one parallel
decoding pass, then read from the files, memory or a disk cache (`data.cache`).

```python
features, labels, summary = load_image_folder(Path("photos"), data_config, report)
features[:8].shape    # (8, height, width, channels): decoded now unless cached
```
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from app.arrays import ImageFiles, MappedArray, read_image
from app.errors import UserError
from app.scanning import CHUNK_ROWS, SummaryBuilder, summarize

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# How many file names a report lists before it only counts.
NAMES_SHOWN = 5


@dataclasses.dataclass
class Listing:
    """The image files of a folder, their labels and how to decode them.

    Attributes:
        root: the image folder.
        paths: the image files, class by class, sorted by name.
        labels: the class folder's name of each file.
        mode: PIL's colour mode, `"L"` or `"RGB"`.
        size: `(height, width)` to resize to, or `None`.
    """

    root: object
    paths: list
    labels: np.ndarray
    mode: str
    size: tuple

    def read(self, path):
        return read_image(path, self.mode, self.size)


def load_image_folder(path, data_config, report):
    """Lists, decodes once and checks the images of a class-per-folder tree.

    Every image is decoded once, in parallel, to check it and to summarise it (statistics,
    hashes). What is then returned depends on `data.cache`: `none` gives `ImageFiles`,
    decoded again whenever a batch needs them; `memory` the decoded float32 array; `disk`
    a memory-mapped uint8 copy under `data.cache_dir`, reused by later runs while the
    files are unchanged.

    Args:
        path: the image folder.
        data_config: the `app.config.DataConfig`.
        report: a dict that receives ignored and skipped files.

    Returns:
        `(features, labels, summary)`: the images, their class folders' names and their
        `app.scanning.Summary`.
    """
    listing = list_image_folder(path, data_config, report)
    disk_cache = DiskCache(listing, data_config) if data_config.cache == "disk" else None
    if disk_cache is not None and disk_cache.exists():
        kept, features = disk_cache.load(report)
        return features, listing.labels[kept], summarize(features)
    chunks = []
    store = chunks.append if data_config.cache == "memory" else None
    if disk_cache is not None:
        store = disk_cache.write
    kept, summary, sample_shape = _decode_all(listing, data_config, report, store)
    if data_config.cache == "memory":
        features = np.concatenate(chunks)
    elif disk_cache is not None:
        features = disk_cache.commit(kept, report)
    else:
        features = ImageFiles([listing.paths[position] for position in kept], listing.mode,
                              listing.size, sample_shape)
    return features, listing.labels[kept], summary


def list_image_folder(path, data_config, report):
    """Lists a class-per-folder tree's images; counts the other files in `report`.

    Hidden files (`.name`, and macOS's `._name`) are ignored silently, other files that are
    not images with a count (`report["ignored_files"]`).

    Raises:
        UserError: if there are no class folders, or a class folder holds no images.
    """
    class_folders = sorted(child for child in path.iterdir()
                           if child.is_dir() and not child.name.startswith("."))
    if not class_folders:
        raise UserError(f"image folder {path} has no class subfolders; "
                        "put each class's images in a subfolder named after the class")
    paths, labels, ignored = [], [], 0
    for folder in class_folders:
        files = [file for file in sorted(folder.iterdir()) if not file.name.startswith(".")]
        images = [file for file in files if file.suffix.lower() in IMAGE_SUFFIXES]
        ignored += len(files) - len(images)
        if not images:
            raise UserError(f"class folder {folder} holds no images; add some or remove the "
                            "folder (every subfolder of an image folder is a class)")
        paths += images
        labels += [folder.name] * len(images)
    if ignored:
        report["ignored_files"] = ignored
    mode = "L" if data_config.color_mode == "grayscale" else "RGB"
    size = tuple(data_config.image_size) if data_config.image_size else None
    return Listing(path, paths, np.array(labels), mode, size)


def _decode_all(listing, data_config, report, store=None):
    """Decodes every image once, in parallel threads (PIL releases the GIL while decoding).

    Returns:
        `(kept, summary, sample_shape)`: the positions of the readable images in
        `listing.paths`, their `Summary` and the shape of one image.
    """
    workers = worker_threads(data_config)
    builder, kept, skipped, first_shape = SummaryBuilder(), [], [], None

    def decode(position):
        try:
            return listing.read(listing.paths[position])
        except Exception as error:  # noqa: BLE001 (sorted out by `check_decoded`)
            return error

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(listing.paths), CHUNK_ROWS):
            positions = range(start, min(start + CHUNK_ROWS, len(listing.paths)))
            rows = []
            for position, pixels in zip(positions, pool.map(decode, positions)):
                if check_decoded(listing, position, pixels, first_shape,
                                 data_config.on_bad_image, skipped):
                    first_shape = first_shape or pixels.shape
                    rows.append(pixels)
                    kept.append(position)
            if rows:
                chunk = np.stack(rows)
                chunk = chunk[..., None] if chunk.ndim == 3 else chunk
                builder.add(chunk)
                if store is not None:
                    store(chunk)
    if skipped:
        report["skipped_images"] = {"count": len(skipped), "first": skipped[:NAMES_SHOWN]}
    if not kept:
        raise UserError(f"image folder {listing.root} holds no readable images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    sample_shape = first_shape if len(first_shape) == 3 else (*first_shape, 1)
    return np.array(kept), builder.finish(), sample_shape


def check_decoded(listing, position, pixels, first_shape, on_bad_image, skipped):
    """Accepts a decoded image, or records or refuses an unreadable one.

    Args:
        listing: the folder's `Listing`.
        position: the file's position in `listing.paths`.
        pixels: what `decode_in_parallel` returned for it.
        first_shape: the shape of the folder's first readable image, or `None`.
        on_bad_image: `data.on_bad_image`: `"error"` or `"skip"`.
        skipped: a list that receives the skipped file's path, relative to the folder.

    Returns:
        Whether the image is kept.

    Raises:
        UserError: for an unreadable image under `error`, or an image of another size.
    """
    from PIL import Image, UnidentifiedImageError

    file = listing.paths[position]
    if isinstance(pixels, Exception):
        if not isinstance(pixels, (UnidentifiedImageError, OSError, Image.DecompressionBombError)):
            raise pixels
        if on_bad_image == "error":
            raise UserError(f"{file} {_image_problem(pixels)}; fix or remove it, or set "
                            "data.on_bad_image: skip")
        skipped.append(str(file.relative_to(listing.root)))
        return False
    if first_shape is not None and pixels.shape != first_shape:
        raise UserError(
            f"{file} is {pixels.shape[1]}×{pixels.shape[0]} but {listing.root}'s first image is "
            f"{first_shape[1]}×{first_shape[0]}; set data.image_size: [height, width]"
        )
    return True


class DiskCache:
    """Decoded images of a folder in a memory-mapped `.npy` file, reused while the files,
    the colour mode, the size and `data.on_bad_image` stay the same.

    The key hashes every file's path, size and modification time, so an edited, added or
    removed file makes a new cache. The array is written under a `.partial` name and
    renamed when complete: an interrupted run leaves no half-written cache behind.
    """

    def __init__(self, listing, data_config):
        directory = Path(data_config.cache_dir or default_cache_dir()).expanduser()
        files = [(str(path.relative_to(listing.root)), *_stat(path)) for path in listing.paths]
        key = hashlib.sha256(json.dumps(
            [str(Path(listing.root).resolve()), listing.mode, listing.size,
             data_config.on_bad_image, files]).encode()).hexdigest()[:24]
        self.array_path = directory / f"{key}.npy"
        self.index_path = directory / f"{key}.json"
        self._partial = directory / f"{key}.npy.partial"
        self._count = len(listing.paths)
        self._array = None
        self._written = 0

    def exists(self):
        return self.array_path.exists() and self.index_path.exists()

    def load(self, report):
        """`(kept, features)`: the positions of the cached images and the mapped array."""
        index = json.loads(self.index_path.read_text())
        if index.get("skipped"):
            report["skipped_images"] = index["skipped"]
        kept = np.array(index["kept"], dtype=np.int64)
        return kept, MappedArray(np.load(self.array_path, mmap_mode="r")[:len(kept)])

    def write(self, chunk):
        if self._array is None:
            self.array_path.parent.mkdir(parents=True, exist_ok=True)
            self._array = np.lib.format.open_memmap(
                self._partial, mode="w+", dtype=np.uint8, shape=(self._count, *chunk.shape[1:]))
        self._array[self._written:self._written + len(chunk)] = chunk
        self._written += len(chunk)

    def commit(self, kept, report):
        """Completes the cache and returns its mapped array."""
        self._array.flush()
        self._array = None
        os.replace(self._partial, self.array_path)
        self.index_path.write_text(json.dumps(
            {"kept": [int(position) for position in kept],
             "skipped": report.get("skipped_images")}))
        return self.load({})[1]


def default_cache_dir():
    """`$XDG_CACHE_HOME/efficient-learning` (by default `~/.cache/efficient-learning`)."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "efficient-learning"


def _stat(path):
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def worker_threads(data_config):
    """Reading threads: `data.workers`, else the machine's cores, at most 8 (beyond,
    decoding rarely gains)."""
    return data_config.workers or max(1, min(8, os.cpu_count() or 1))


def _image_problem(error):
    from PIL import Image

    if isinstance(error, Image.DecompressionBombError):
        return (f"has more pixels than PIL's limit of {Image.MAX_IMAGE_PIXELS:,} x 2 (a "
                "decompression bomb, or a photo far larger than training needs)")
    return f"is not a readable image ({error})"
