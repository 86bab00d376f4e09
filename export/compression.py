"""Post-training weight compression of a converted package (`coremltools.optimize.coreml`).

| mode | weights become | decompressed by |
|---|---|---|
| `int8` | symmetric 8-bit integers with a per-channel scale | `constexpr_affine_dequantize` |
| `palettize6` | 6-bit indices into a 64-entry k-means palette | `constexpr_lut_to_dense` |
| `palettize4` | 4-bit indices into a 16-entry k-means palette | `constexpr_lut_to_dense` |

Compute stays in the package's precision; only storage shrinks, so the Neural Engine still runs
it. The weights are decompressed when the model loads.

```python
small = compress(mlmodel, "palettize4")
```
"""

from pathlib import Path

COMPRESSIONS = ("int8", "palettize6", "palettize4")
# Tensors with fewer elements stay as they are: compressing a bias saves nothing. Lower than
# coremltools' default (2048) so that the small students here are compressed at all.
WEIGHT_THRESHOLD = 256


def compress(mlmodel, mode):
    """Returns a copy of `mlmodel` with compressed weights.

    Args:
        mlmodel: a converted ML program (`coremltools.models.MLModel`).
        mode: `"int8"`, `"palettize6"` or `"palettize4"`.
    """
    import coremltools.optimize.coreml as cto

    if mode == "int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", weight_threshold=WEIGHT_THRESHOLD))
        return cto.linear_quantize_weights(mlmodel, config)
    if mode in ("palettize6", "palettize4"):
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
            mode="kmeans", nbits=int(mode[-1]), weight_threshold=WEIGHT_THRESHOLD))
        return cto.palettize_weights(mlmodel, config)
    raise ValueError(f"compression must be one of {COMPRESSIONS}; got {mode!r}")


def package_size(path):
    """Bytes of a saved `.mlpackage` (all its files)."""
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())
