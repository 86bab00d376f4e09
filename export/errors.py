"""The exceptions of the export package. Each message is one line that names the problem and
what to do, so the application shows it as it is (`python -m app export` exits 2 with it).

```python
try:
    mlmodel = convert(model, labels)
except ExportError as error:
    print(f"error: {error}")
```
"""


class ExportError(Exception):
    """A model or package that the export cannot handle; the message says why and what to do."""


class UnconvertibleModel(ExportError):
    """The model holds a layer or operation that Core ML cannot convert."""


class UnsupportedOperation(ExportError):
    """The program has an operation that the NumPy interpreter cannot evaluate."""
