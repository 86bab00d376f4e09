"""The Neural Engine readiness rules, each on a small MIL program that breaks (or keeps) it."""

import logging

import numpy as np
import pytest

logging.getLogger("coremltools").setLevel(logging.ERROR)
ct = pytest.importorskip("coremltools")
from coremltools.converters.mil import Builder as mb  # noqa: E402

from export import ProgramInterpreter, readiness_report  # noqa: E402
from export.ane_report import format_report  # noqa: E402


def report_of(build, shape=(1, 4, 8, 8), dtype="fp16"):
    """The report of `build(x)`, where `x` is a program input cast to `dtype`."""

    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=ct.target.iOS17)
    def program(x):
        return build(mb.cast(x=x, dtype=dtype) if dtype != "fp32" else x)

    return readiness_report(ProgramInterpreter(program))


def rules(report, level):
    return [finding["rule"] for finding in report[level]]


def conv(x, kernel=3, dilations=(1, 1)):
    weight = np.ones((4, 4, kernel, kernel), dtype=np.float16 if x.dtype.__name__ == "fp16"
                     else np.float32)
    return mb.conv(x=x, weight=weight, dilations=list(dilations), pad_type="same")


def test_a_clean_fp16_program_has_no_findings():
    report = report_of(lambda x: mb.relu(x=conv(x)))
    assert report["errors"] == [] and report["warnings"] == []
    assert report["counts"] == {"operations": 3, "transposes": 0, "reshapes": 0}
    assert "MLComputePlan" in report["note"]


def test_fp32_compute_is_an_error():
    report = report_of(lambda x: mb.relu(x=conv(x)), dtype="fp32")
    assert rules(report, "errors") == ["fp32_compute"]
    assert len(report["errors"][0]["operations"]) == 2
    assert "--precision fp16" in format_report(report)


def test_dimensions_over_the_limit_are_errors():
    report = report_of(lambda x: mb.relu(x=x), shape=(1, 20000))
    assert rules(report, "errors") == ["dimension_limit"]


def repeat_rows(x, factor):
    """Nearest upsampling of the height as Keras's UpSampling2D converts it."""
    expanded = mb.expand_dims(x=x, axes=[3])
    tiled = mb.tile(x=expanded, reps=[1, 1, 1, factor, 1])
    return mb.reshape(x=tiled, shape=[1, 4, 8 * factor, 8])


@pytest.mark.parametrize("factor,flagged", [(2, False), (3, True)])
def test_upsampling_written_as_tile_and_reshape_is_caught(factor, flagged):
    report = report_of(lambda x: repeat_rows(x, factor))
    assert ("large_upsampling" in rules(report, "warnings")) == flagged


def test_an_fp32_operation_inside_an_fp16_program_is_not_told_to_export_fp16():
    report = report_of(lambda x: mb.cast(x=mb.relu(x=mb.cast(x=conv(x), dtype="fp32")),
                                         dtype="fp16"))
    assert rules(report, "errors") == ["fp32_compute"]
    assert "--precision fp16" not in format_report(report)
    assert "fp16 package keeps them in fp32" in format_report(report)


def test_packed_palette_indices_are_not_held_to_the_dimension_limit():
    """A 4-bit palette of a 128×64×3×3 kernel packs its indices into 36,864 bytes, a 1-D
    constant over 16,384 long: not a tensor the Neural Engine computes."""
    def build(x):
        packed = np.random.default_rng(0).integers(0, 256, 128 * 64 * 9 // 2).astype(np.uint8)
        weight = mb.constexpr_lut_to_dense(indices=packed,
                                           lut=np.linspace(-1, 1, 16).astype(np.float16),
                                           shape=np.array([128, 64, 3, 3], dtype=np.uint32))
        return mb.conv(x=x, weight=weight, pad_type="same")

    report = report_of(build, shape=(1, 64, 8, 8))
    assert "dimension_limit" not in rules(report, "errors")


@pytest.mark.parametrize("build,rule", [
    (lambda x: conv(x, dilations=(2, 2)), "dilated_convolution"),
    (lambda x: conv(x, kernel=15), "wide_convolution"),
    (lambda x: mb.max_pool(x=x, kernel_sizes=[15, 15], strides=[1, 1], pad_type="same"),
     "large_pooling"),
    (lambda x: mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[3, 3], pad_type="valid"),
     "large_pooling"),
    (lambda x: mb.upsample_nearest_neighbor(x=x, scale_factor_height=4, scale_factor_width=4),
     "large_upsampling"),
    (lambda x: mb.gather(x=x, indices=np.array([0, 2], dtype=np.int32), axis=1),
     "gather_scatter"),
    (lambda x: mb.reshape(x=x, shape=mb.shape(x=mb.transpose(x=x, perm=[0, 1, 3, 2]))),
     "dynamic_reshape"),
    (lambda x: mb.add(x=mb.cast(x=x, dtype="int32"), y=np.int32(1)), "int32_compute"),
])
def test_warnings(build, rule):
    report = report_of(build)
    assert rule in rules(report, "warnings")
    assert report["errors"] == []


def test_recurrent_cells_fall_back():
    zeros = np.zeros((1, 4), np.float16)
    report = report_of(lambda x: mb.lstm(
        x=x, initial_h=zeros, initial_c=zeros, weight_ih=np.ones((16, 3), np.float16),
        weight_hh=np.ones((16, 4), np.float16))[0], shape=(5, 1, 3))
    assert rules(report, "warnings") == ["recurrent_cell"]


def test_control_flow_falls_back():
    def build(x):
        return mb.while_loop(_cond=lambda v: mb.less(x=mb.reduce_sum(x=v), y=np.float16(100)),
                             _body=lambda v: [mb.mul(x=v, y=np.float16(2))], loop_vars=[x])

    assert "control_flow" in rules(report_of(build, shape=(1, 4)), "warnings")


def test_moderate_settings_pass():
    report = report_of(lambda x: mb.upsample_nearest_neighbor(
        x=mb.max_pool(x=conv(x, kernel=13), kernel_sizes=[2, 2], strides=[2, 2],
                      pad_type="valid"), scale_factor_height=2, scale_factor_width=2))
    assert report["warnings"] == [] and report["errors"] == []


def test_transposes_and_reshapes_are_counted():
    report = report_of(lambda x: mb.reshape(x=mb.transpose(x=mb.transpose(x=x, perm=[0, 2, 3, 1]),
                                                           perm=[0, 3, 1, 2]),
                                            shape=[1, 256]))
    assert report["counts"]["transposes"] == 2 and report["counts"]["reshapes"] == 1
    assert "dynamic_reshape" not in rules(report, "warnings")


def test_open_range_inputs_are_flagged(tmp_path):
    from coremltools.converters.mil.mil import get_new_symbol

    @mb.program(input_specs=[mb.TensorSpec(shape=(get_new_symbol(), 4))],
                opset_version=ct.target.iOS17)
    def program(x):
        return mb.relu(x=x)

    mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                         inputs=[ct.TensorType(name="x", shape=(ct.RangeDim(1, 16), 4))])
    mlmodel.save(str(tmp_path / "ranged.mlpackage"))
    report = readiness_report(ProgramInterpreter.from_package(tmp_path / "ranged.mlpackage"))
    assert "open_range_shape" in rules(report, "warnings")
