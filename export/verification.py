"""The export gate: the saved package, run by the NumPy interpreter, against the Keras model.

The interpreter reads the logits inside the program (the input of the softmax that feeds the
classifier) and its probabilities, batch by batch, and compares both with the Keras model on
the same held-out inputs. A Keras model that ends in its own softmax is judged on its
probabilities alone (its logits' error is reported through their logarithm, each row's mean
taken out, but float32 probabilities that underflow make it unfit for a bound).

Tolerances (on logits, `atol + rtol · max|Keras logit|`; on probabilities, absolute) and the
top-1 agreement that a compressed package must keep are documented in the README:

| package | logits within | probabilities within | top-1 agreement |
|---|---|---|---|
| fp32 | 1e-4 + 1e-5 · scale | 1e-4 | ≥ 0.99 |
| fp16 | 5e-2 + 1e-2 · scale | 2e-2 | ≥ 0.98 |
| int8 weights | — | — | ≥ 0.98 |
| 6-bit palette | — | — | ≥ 0.97 |
| 4-bit palette | — | — | ≥ 0.90 |
| sparse | as fp16 or fp32 | as fp16 or fp32 | as fp16 or fp32 |
| sparse + int8 or 4-bit palette | — | — | as int8 or 4-bit palette |

Compressed weights change the function, so a compressed package's logits are compared with a
reference of the same compression instead: the program it was saved from (`reference`), within
the uncompressed bounds of the precision. Its weights are checked one by one against the
model's by `export.weight_check`.

A model whose outputs do not depend on the inputs (an untrained network's, say) makes every
decision agree trivially: such a package is refused with "cannot verify decisions: constant
outputs" rather than passed.

```python
report = verify_package(ProgramInterpreter.from_package(path), keras_model, x_test,
                        precision="fp16")
report["passed"], report["max_abs_logit_error"], report["top1_agreement"]
```
"""

import numpy as np

# precision → (atol, rtol) on logits, for uncompressed packages.
LOGIT_TOLERANCES = {"fp32": (1e-4, 1e-5), "fp16": (5e-2, 1e-2)}
PROBABILITY_TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2}
# Compressed weights change the function itself; what must survive is the decision.
MIN_TOP1_AGREEMENT = {"fp32": 0.99, "fp16": 0.98, "int8": 0.98, "palettize6": 0.97,
                      "palettize4": 0.90}
# Outputs whose spread over the samples is below this fraction of their scale are constant.
CONSTANT_SPREAD = 1e-6


def verify_package(interpreter, keras_model, x, precision, compression=None,
                   outputs_probabilities=False, package_inputs=None, reference=None):
    """Runs the package's program on `x` and compares it with `keras_model`.

    Args:
        interpreter: an `export.interpreter.ProgramInterpreter` of the saved package.
        keras_model: the Keras model that was exported.
        x: held-out inputs, shaped like the model's input with a batch axis.
        precision: `"fp16"` or `"fp32"`, the package's compute precision.
        compression: `None` or one of `export.compression.COMPRESSIONS`.
        outputs_probabilities: whether `keras_model` ends in a softmax
            (`export.converter.outputs_probabilities`) rather than outputting logits.
        package_inputs: what the package takes for the same samples, when that is not `x`
            (an image input: `(samples, channels, height, width)` pixels).
        reference: for a compressed package, an interpreter of the program it was saved
            from (`ProgramInterpreter.from_mlmodel`): the package's logits must be
            its logits, within the uncompressed bounds of `precision`.

    Returns:
        A JSON-ready dict: `samples`, `max_abs_logit_error`, `max_abs_probability_error`,
        `top1_agreement`, `labels_consistent` (the classifier's label is the argmax),
        the `criterion` applied and whether the package `passed` it.
    """
    expected = np.asarray(keras_model.predict(x, verbose=0, batch_size=256), dtype=np.float64)
    inputs = x if package_inputs is None else package_inputs
    logits, probabilities, labels = run_classifier(interpreter, inputs)
    reference_logits = None if reference is None else run_classifier(reference, inputs)[0]
    if outputs_probabilities:
        expected_probabilities = expected
        # log p = logit − logsumexp: compare both sides with each row's mean taken out.
        expected = np.log(np.clip(expected, 1e-30, None))
        expected = expected - expected.mean(axis=-1, keepdims=True)
        logits = logits - logits.mean(axis=-1, keepdims=True)
    else:
        expected_probabilities = _softmax(expected)
    agreement = float(np.mean(logits.argmax(axis=-1) == expected.argmax(axis=-1)))
    argmax_labels = np.asarray(class_labels(interpreter))[probabilities.argmax(axis=-1)]
    logit_error = float(np.max(np.abs(logits - expected)))
    probability_error = float(np.max(np.abs(probabilities - expected_probabilities)))
    report = {
        "samples": int(len(x)),
        "precision": precision,
        "compression": compression,
        "max_abs_logit_error": logit_error,
        "max_abs_probability_error": probability_error,
        "top1_agreement": agreement,
        # Agreement means little when the model gives every input the same class.
        "distinct_decisions": int(len(np.unique(expected.argmax(axis=-1)))),
        "labels_consistent": bool(np.all(labels == argmax_labels)),
    }
    # Sparse storage is lossless: a sparse package is judged as an uncompressed one.
    values_compression = compression.removeprefix("sparse").lstrip("+") if compression else None
    minimum = MIN_TOP1_AGREEMENT[values_compression or precision]
    agreement_criterion = f"top-1 agreement >= {minimum}"
    if _constant(expected):
        report["criterion"] = "cannot verify decisions: constant outputs"
        passed = False
    elif not values_compression:
        atol, rtol = LOGIT_TOLERANCES[precision]
        bound = atol + rtol * float(np.max(np.abs(expected)))
        probability_bound = PROBABILITY_TOLERANCES[precision]
        criteria = [f"max |Δ probability| <= {probability_bound:g}", agreement_criterion]
        passed = probability_error <= probability_bound and agreement >= minimum
        if not outputs_probabilities:
            criteria.insert(0, f"max |Δ logit| <= {bound:.3g}")
            passed = passed and logit_error <= bound
        report["criterion"] = " and ".join(criteria)
    else:
        report["criterion"] = agreement_criterion
        passed = agreement >= minimum
        if reference_logits is not None:
            atol, rtol = LOGIT_TOLERANCES[precision]
            bound = atol + rtol * float(np.max(np.abs(reference_logits)))
            error = float(np.max(np.abs(logits - reference_logits)))
            report["max_abs_logit_error_vs_reference"] = error
            report["criterion"] = (f"max |Δ logit| against the compressed program <= "
                                   f"{bound:.3g} and {agreement_criterion}")
            passed = passed and error <= bound
    report["passed"] = bool(passed and report["labels_consistent"]
                            and np.all(np.isfinite(logits)))
    return report


def run_classifier(interpreter, x):
    """The program's logits, probabilities and labels for every row of `x`.

    Rows go in batches of the largest size the input accepts (fixed or enumerated; 64
    for an open range), the last one filled up with copies of its last row.
    """
    logits_name, probabilities_name, label_name = _classifier_variables(interpreter)
    input_name = interpreter.input_names[0]
    batch = _largest_batch(interpreter, input_name)
    results = ([], [], [])
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        rows = len(chunk)
        if rows < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - rows, axis=0)])
        values = interpreter.run(**{input_name: chunk.astype(np.float32)})
        for collected, name in zip(results, (logits_name, probabilities_name, label_name)):
            collected.append(np.asarray(values[name]).reshape(len(chunk), -1)[:rows])
    logits, probabilities, labels = (np.concatenate(collected) for collected in results)
    return logits.astype(np.float64), probabilities.astype(np.float64), labels.reshape(-1)


def _largest_batch(interpreter, input_name):
    declared = interpreter.function.inputs[input_name].shape[0]
    if isinstance(declared, (int, np.integer)):
        return int(declared)
    features = [] if interpreter.spec is None else interpreter.spec.description.input
    for feature in features:
        shapes = feature.type.multiArrayType.enumeratedShapes.shapes
        if feature.name == input_name and shapes:
            return max(shape.shape[0] for shape in shapes)
    return 64


def _classifier_variables(interpreter):
    """Names of the logits (the softmax's input), the probabilities and the label."""
    operations = {var.name: op for op in interpreter.operations for var in op.outputs}
    classify = _classify_op(interpreter)
    var = classify.inputs["probabilities"]
    while operations[var.name].op_type == "cast":
        var = operations[var.name].inputs["x"]
    softmax = operations[var.name]
    if softmax.op_type != "softmax":
        raise ValueError(f"the classifier's probabilities come from {softmax.op_type}, "
                         "not a softmax over logits")
    return softmax.inputs["x"].name, classify.outputs[1].name, classify.outputs[0].name


def class_labels(interpreter):
    """The class labels that the program's classifier outputs, as strings."""
    return [str(label) for label in _classify_op(interpreter).inputs["classes"].val]


def _classify_op(interpreter):
    classify = next((op for op in interpreter.operations if op.op_type == "classify"), None)
    if classify is None:
        raise ValueError("the program has no classify operation; export a classifier")
    return classify


def _constant(outputs):
    """Whether every sample gets (nearly) the same outputs."""
    spread = float(np.max(outputs.max(axis=0) - outputs.min(axis=0)))
    return len(outputs) > 1 and spread <= CONSTANT_SPREAD * max(1.0, float(np.max(np.abs(outputs))))


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
