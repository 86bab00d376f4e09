"""`python -m app export RUN_DIR|MODEL.keras`: a verified Core ML package (`app.exporting`).

A model that Core ML cannot convert, or a package holding an operation the verifier cannot
run, is a one-line error (exit 2); a package that fails its checks exits 1 and writes nothing.
"""

import argparse
import sys

from app.commands.arguments import BACKEND, start_backend
from app.errors import UserError
from export import COMPRESSIONS, PRECISIONS


def add_parser(commands):
    parser = commands.add_parser(
        "export", parents=[BACKEND], help="write a verified Core ML package (.mlpackage)",
        description="Convert RUN_DIR/best.keras (or a .keras file) to <name>.mlpackage "
                    "through TensorFlow, whatever backend trained it; check the saved package "
                    "with a NumPy interpreter against the Keras model on held-out data, rate "
                    "its Neural Engine readiness, and write both reports as JSON next to it. "
                    "A failed check writes nothing and exits 1.",
    )
    parser.add_argument("source", metavar="RUN_DIR|MODEL.keras")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16",
                        help="compute precision (default: fp16, which the Neural Engine runs)")
    parser.add_argument("--batch", type=_batch_sizes, default=(1,), metavar="N[,N...]",
                        help="batch sizes the package accepts (default: 1; several give "
                             "enumerated shapes)")
    parser.add_argument("--compress", choices=COMPRESSIONS,
                        help="compress the weights: int8, palettize6, palettize4; for a "
                             "pruned model sparse, sparse+palettize4 or sparse+int8 (iOS 18)")
    parser.add_argument("--input", choices=("tensor", "image"), default="tensor",
                        help="what the package takes: a float32 tensor (default) or an image "
                             "(RGB or grayscale pixels, batch 1, for Vision and "
                             "CVPixelBuffer)")
    parser.add_argument("--strict", action="store_true",
                        help="fail when the Neural Engine report has errors")
    parser.add_argument("--output", metavar="DIR",
                        help="where to write (default: beside the model)")
    parser.add_argument("--name", help="package name (default: the run's name)")
    parser.add_argument("--author", help="metadata: author (default: your user name)")
    parser.add_argument("--license", default="not specified", help="metadata: license")
    parser.add_argument("--description", help="metadata: short description")
    parser.add_argument("--model-version", default="1.0", help="metadata: version")
    parser.set_defaults(handler=handle)


def handle(arguments):
    from app.backend import is_installed
    from app.exporting import ExportCheckFailed, ExportOptions, run_export
    from export import ExportError

    if arguments.backend not in (None, "tensorflow"):
        raise UserError(f"export converts through TensorFlow; drop --backend "
                        f"{arguments.backend} (a model trained on any backend exports)")
    if not is_installed("tensorflow"):
        raise UserError("export converts through TensorFlow and coremltools: "
                        "pip install 'efficient-learning[coreml]'")
    start_backend("tensorflow")
    options = ExportOptions(
        precision=arguments.precision, batch_sizes=arguments.batch,
        compression=arguments.compress, image_input=arguments.input == "image",
        strict=arguments.strict, output_dir=arguments.output,
        name=arguments.name, author=arguments.author, license=arguments.license,
        description=arguments.description, version=arguments.model_version)
    try:
        result = run_export(arguments.source, options)
    except ExportError as error:
        raise UserError(str(error)) from None
    except ExportCheckFailed as failure:
        message, result = failure.args
        if result is not None:
            print_export(result)
        print(f"error: {message}; nothing was written", file=sys.stderr)
        return 1
    print_export(result)
    return 0


def print_export(result):
    """The package, its size, the verification and the Neural Engine report, for people."""
    from export import format_report

    verification = result["verification"]
    size = f"{result['size_bytes'] / 1024:.1f} KiB"
    if result["uncompressed_size_bytes"]:
        size += (f" ({result['compression']}; uncompressed "
                 f"{result['uncompressed_size_bytes'] / 1024:.1f} KiB)")
    print(f"package           {result['package']}")
    print(f"size              {size}, {result['precision']}, {result['input']} input, batch "
          f"{','.join(map(str, result['batch_sizes']))}")
    print(f"verification      {'passed' if verification['passed'] else 'FAILED'}: max |Δ logit| "
          f"{verification['max_abs_logit_error']:.3g}, top-1 agreement "
          f"{verification['top1_agreement']:.4f} on {verification['samples']} samples "
          f"({verification['data']}; {verification['criterion']})")
    if "weights" in verification:
        weights = verification["weights"]
        print(f"{'':<18}{weights['weights']} compressed weights checked against the model's: "
              f"{'all' if weights['passed'] else len(weights['failures'])} "
              f"{'match' if weights['passed'] else 'wrong'}")
    lines = [*format_report(result["neural_engine"]).splitlines(),
             "(static rules: placement is confirmed on a Mac with MLComputePlan)"]
    print("\n".join(f"{'neural engine' if index == 0 else '':<18}{line}"
                    for index, line in enumerate(lines)))


def _batch_sizes(text):
    sizes = text.split(",")
    if not all(size.strip().isdigit() and int(size) >= 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"must be batch sizes >= 1 separated by commas, "
                                         f"e.g. 1,8,32; got {text}")
    return tuple(sorted({int(size) for size in sizes}))
