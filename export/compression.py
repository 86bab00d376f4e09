"""Post-training weight compression of a converted package (`coremltools.optimize.coreml`).

| mode | weights become | decompressed by |
|---|---|---|
| `int8` | symmetric 8-bit integers with a per-channel scale | `constexpr_affine_dequantize` |
| `palettize6` | 6-bit indices into a 64-entry k-means palette | `constexpr_lut_to_dense` |
| `palettize4` | 4-bit indices into a 16-entry k-means palette | `constexpr_lut_to_dense` |
| `sparse` | a bit mask and the non-zero values | `constexpr_sparse_to_dense` |
| `sparse+palettize4` | a mask and 4-bit indices of the non-zeros (iOS 18) | `constexpr_lut_to_sparse` |
| `sparse+int8` | a mask and 8-bit non-zeros (iOS 18) | `constexpr_sparse_blockwise_shift_scale` |

Compute stays in the package's precision; only storage shrinks, so the Neural Engine still runs
it. The weights are decompressed when the model loads. `sparse` keeps the model's own zeros (a
pruned model's, `python -m app prune`): it removes nothing itself, so it changes no output.

```python
small = compress(mlmodel, "palettize4")
```
"""

from pathlib import Path

COMPRESSIONS = ("int8", "palettize6", "palettize4", "sparse", "sparse+palettize4", "sparse+int8")
# Joint sparse compression needs the iOS 18 / macOS 15 operations.
JOINT_COMPRESSIONS = ("sparse+palettize4", "sparse+int8")
JOINT_DEPLOYMENT_TARGET = "iOS18"
# Weights with fewer zeros than this stay dense in a sparse package: a mask costs a bit per
# weight, so sparse storage pays from about half zeros on (coremltools' default too).
MIN_WEIGHT_SPARSITY = 0.5
# Tensors with fewer elements stay as they are: compressing a bias saves nothing. Lower than
# coremltools' default (2048) so that the small students here are compressed at all.
WEIGHT_THRESHOLD = 256


def compress(mlmodel, mode):
    """Returns a copy of `mlmodel` with compressed weights.

    Args:
        mlmodel: a converted ML program (`coremltools.models.MLModel`); for the joint modes,
            converted for `JOINT_DEPLOYMENT_TARGET`.
        mode: one of `COMPRESSIONS`.
    """
    import coremltools.optimize.coreml as cto

    if mode not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}; got {mode!r}")
    joint = False
    if mode.startswith("sparse"):
        # Exactly the zeros: no float16 weight but 0 is below 1e-12.
        config = cto.OptimizationConfig(global_config=cto.OpThresholdPrunerConfig(
            threshold=1e-12, minimum_sparsity_percentile=MIN_WEIGHT_SPARSITY,
            weight_threshold=WEIGHT_THRESHOLD))
        mlmodel = cto.prune_weights(mlmodel, config)
        mode, joint = mode.partition("+")[2], True
        if not mode:
            return mlmodel
    if mode == "int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", weight_threshold=WEIGHT_THRESHOLD))
        return cto.linear_quantize_weights(mlmodel, config, joint_compression=joint)
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
        mode="kmeans", nbits=int(mode[-1]), weight_threshold=WEIGHT_THRESHOLD))
    return cto.palettize_weights(mlmodel, config, joint_compression=joint)


def package_size(path):
    """Bytes of a saved `.mlpackage` (all its files)."""
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())
