"""One pass over a dataset's features: what the statistics, the leakage check and the
fingerprint need, gathered chunk by chunk so that the features never have to fit in memory.

```python
builder = SummaryBuilder()
for start in range(0, len(features), 512):
    builder.add(features[start:start + 512])
summary = builder.finish()
mean, variance = summary.statistics(train_positions)   # per channel, train only
```
"""

import dataclasses
import hashlib

import numpy as np

# Rows read at a time: small enough for flat memory, large enough to amortise the reads.
CHUNK_ROWS = 512


@dataclasses.dataclass
class Summary:
    """Per-sample sums and hashes of a dataset's features.

    Attributes:
        row_hashes: a hash of each sample's values, to find identical samples.
        sums, squares: `(samples, channels)` sums of each sample's values and squared values
            per channel (per feature for tabular data), after subtracting `shift`.
        shift: a per-channel value near the mean, subtracted before summing so that the
            variance keeps its precision when the mean is large.
        values_per_channel: how many values of one channel a sample has (pixels, or 1).
        minimum, maximum: each sample's smallest and largest value.
        digest: a SHA-256 of all samples' float32 bytes, in order.
    """

    row_hashes: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    shift: np.ndarray
    values_per_channel: int
    minimum: np.ndarray
    maximum: np.ndarray
    digest: object

    def statistics(self, positions):
        """Per-channel mean and variance of the samples at `positions`.

        A constant channel gets variance 1 so that normalising leaves it at 0 instead of
        dividing unseen values by zero.
        """
        count = len(positions) * self.values_per_channel
        shifted_mean = self.sums[positions].sum(axis=0) / count
        variance = self.squares[positions].sum(axis=0) / count - shifted_mean**2
        variance = np.where(variance < 1e-12, 1.0, variance)
        return (shifted_mean + self.shift).astype(np.float32), variance.astype(np.float32)

    def value_range(self, positions):
        """The smallest and largest value of the samples at `positions`."""
        return float(self.minimum[positions].min()), float(self.maximum[positions].max())

    def non_finite_rows(self):
        """Positions of the samples with a NaN or infinite value."""
        return np.flatnonzero(~np.isfinite(self.sums).all(axis=1))

    def fingerprint(self, labels):
        """A short hash of the features and `labels`, to recognise the same data."""
        digest = self.digest.copy()
        digest.update(np.ascontiguousarray(labels).tobytes())
        return digest.hexdigest()[:16]


class SummaryBuilder:
    """Builds a `Summary` from the samples given to `add`, chunk by chunk, in order."""

    def __init__(self):
        self._parts = []
        self._shift = None
        self._values_per_channel = None
        self._digest = hashlib.sha256()

    def add(self, rows):
        """Adds a float32 array of samples (samples on axis 0)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if len(rows) == 0:
            return
        self._digest.update(rows.tobytes())
        channels = rows.reshape(len(rows), -1, rows.shape[-1]).astype(np.float64)
        if self._shift is None:
            self._shift = np.nan_to_num(channels[0].mean(axis=0))
            self._values_per_channel = channels.shape[1]
        shifted = channels - self._shift
        flat = rows.reshape(len(rows), -1)
        self._parts.append((
            [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in rows],
            shifted.sum(axis=1), (shifted**2).sum(axis=1), flat.min(axis=1), flat.max(axis=1)))

    def finish(self):
        hashes, sums, squares, minimum, maximum = (
            np.concatenate(column) for column in zip(*self._parts))
        return Summary(hashes, sums, squares, self._shift, self._values_per_channel,
                       minimum, maximum, self._digest)


def summarize(features):
    """The `Summary` of an array (in memory, or lazily read), read in chunks."""
    builder = SummaryBuilder()
    for start in range(0, len(features), CHUNK_ROWS):
        builder.add(features[start:start + CHUNK_ROWS])
    return builder.finish()
