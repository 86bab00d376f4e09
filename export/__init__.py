"""Core ML export of trained classifiers, and its checks on machines without Core ML.

- `convert`, `set_metadata` (`export.converter`): Keras → ML program classifier.
- `compress`, `package_size` (`export.compression`): int8, palettized and sparse weights.
- `ProgramInterpreter` (`export.interpreter`): runs a saved program with NumPy.
- `verify_package` (`export.verification`): the interpreter against the Keras model.
- `check_compressed_weights` (`export.weight_check`): a compressed package's weights against
  the uncompressed program's.
- `readiness_report` (`export.ane_report`): static Neural Engine rules.
- `ExportError` and its kinds (`export.errors`): one-line messages for the application to show.

The package never imports the application (`app`); coremltools' private APIs are used only
through `export.coreml_private`.

```python
mlmodel = convert(model, class_labels, precision="fp16")
mlmodel.save("student.mlpackage")
report = verify_package(ProgramInterpreter.from_package("student.mlpackage"), model, x_test,
                        precision="fp16")
```
"""

from export.ane_report import format_report, readiness_report
from export.compression import COMPRESSIONS, compress, package_size
from export.converter import PRECISIONS, convert, outputs_probabilities, set_metadata
from export.errors import ExportError, UnconvertibleModel, UnsupportedOperation
from export.interpreter import ProgramInterpreter
from export.verification import verify_package
from export.weight_check import check_compressed_weights

__all__ = [
    "COMPRESSIONS",
    "PRECISIONS",
    "ExportError",
    "ProgramInterpreter",
    "UnconvertibleModel",
    "UnsupportedOperation",
    "check_compressed_weights",
    "compress",
    "convert",
    "format_report",
    "outputs_probabilities",
    "package_size",
    "readiness_report",
    "set_metadata",
    "verify_package",
]
