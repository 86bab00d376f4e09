"""Arrays whose rows are read when indexed: the features of data too large to hold in memory.

`ImageFiles` decodes image files, `MappedArray` reads a memory-mapped array (an uncompressed
`.npz` member, or a disk cache). Both index like NumPy arrays (`rows[3]`, `rows[:64]`,
`rows[[5, 1]]` return float32 NumPy arrays) and `subset` selects rows without reading them, so
that a split of a million files is a list of a million paths.

```python
rows = ImageFiles(["a.png", "b.png", "c.png"], mode="RGB", size=None, sample_shape=(64, 64, 3))
train = select(rows, np.array([2, 0]))   # still lazy
train[:1].shape                          # (1, 64, 64, 3): c.png, decoded now
```
"""

import zipfile

import numpy as np


class LazyRows:
    """The shared indexing of lazily read arrays: `positions` into the underlying rows.

    Subclasses implement `_read(positions)`, which returns the rows at those positions of the
    underlying storage as a float32 array.
    """

    dtype = np.dtype("float32")

    def __init__(self, length, sample_shape, positions=None):
        self.positions = np.arange(length) if positions is None else np.asarray(positions)
        self.sample_shape = tuple(sample_shape)

    @property
    def shape(self):
        return (len(self.positions), *self.sample_shape)

    @property
    def ndim(self):
        return 1 + len(self.sample_shape)

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, key):
        positions = self.positions[key]
        if np.ndim(positions) == 0:
            return self._read(np.array([positions]))[0]
        return self._read(positions)

    def subset(self, positions):
        """The rows at `positions` (an index array or a boolean mask), still unread."""
        lazy = object.__new__(type(self))
        lazy.__dict__.update(self.__dict__)
        lazy.positions = self.positions[positions]
        return lazy

    def _read(self, positions):
        raise NotImplementedError


class ImageFiles(LazyRows):
    """Image files decoded to float32 pixels `(height, width, channels)` when indexed.

    Args:
        paths: the image files.
        mode: PIL's colour mode, `"L"` (grayscale) or `"RGB"`.
        size: `(height, width)` to resize to, or `None` to keep the files' size.
        sample_shape: the shape of one decoded image.
    """

    def __init__(self, paths, mode, size, sample_shape):
        super().__init__(len(paths), sample_shape)
        self.paths = np.asarray([str(path) for path in paths])
        self.mode = mode
        self.size = size

    def _read(self, positions):
        images = np.empty((len(positions), *self.sample_shape), dtype=np.float32)
        for row, position in enumerate(positions):
            images[row] = read_image(self.paths[position], self.mode, self.size).reshape(
                self.sample_shape)
        return images


class MappedArray(LazyRows):
    """A memory-mapped array read as float32 rows when indexed.

    Args:
        array: an `np.memmap` (or any array whose rows should be converted when read).
    """

    def __init__(self, array):
        super().__init__(len(array), array.shape[1:])
        self.array = array

    def _read(self, positions):
        return np.asarray(self.array[positions], dtype=np.float32)


def select(array, positions):
    """`array[positions]`, without reading the rows of a lazy array."""
    if isinstance(array, LazyRows):
        return array.subset(positions)
    return array[positions]


def read_image(path, mode, size):
    """One image file as a float32 array `(height, width)` (mode `L`) or `(height, width, 3)`.

    Raises:
        PIL.UnidentifiedImageError, OSError, PIL.Image.DecompressionBombError: for a file that
            is not a readable image, or has more pixels than PIL allows.
    """
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert(mode)
        if size is not None:
            image = image.resize((size[1], size[0]))
        return np.asarray(image, dtype=np.float32)


def map_npz_member(path, key):
    """Memory-maps the array `key` of an `.npz` file, or returns `None` if it is compressed.

    `np.load(mmap_mode="r")` maps `.npy` files only; an `.npz` member saved by `numpy.savez`
    is an `.npy` file stored as is inside the zip, so it can be mapped at its offset.
    """
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local_header = handle.read(30)
        name_length = int.from_bytes(local_header[26:28], "little")
        extra_length = int.from_bytes(local_header[28:30], "little")
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        if dtype.hasobject:
            return None
        offset = handle.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran_order else "C")
