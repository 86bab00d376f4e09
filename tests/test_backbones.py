"""Pretrained bodies: Keras applications and transferred runs, their preprocessing, weights,
and fine-tuning in two phases."""

import json

import keras
import numpy as np
import pytest

from app.config import ModelConfig, load_config
from app.data import load_dataset
from app.engine import build_compiled_model, fit_configured, resolve_config
from app.errors import UserError
from app.tables.architectures import APPLICATIONS, build_model
from tests.helpers import fit


def classifier(architecture, input_shape=(24, 24, 1), **keys):
    return build_model(ModelConfig(architecture=architecture, backbone_weights="none", **keys),
                       input_shape, 4)


def variables(layer):
    return {variable.path: keras.ops.convert_to_numpy(variable).copy()
            for variable in layer.weights}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", list(APPLICATIONS))
def test_each_backbone_builds_and_round_trips(architecture, tmp_path):
    # No training here: one step compiles the whole network's gradient (33 s for
    # MobileNetV3-Large on TensorFlow, 27 s for EfficientNet-B0 on JAX, most of each test),
    # and the next test trains a body.
    model = classifier(architecture)
    assert model.get_layer("backbone").input.shape[1:] == (32, 32, 3)  # resized, grey → RGB
    x = np.random.default_rng(0).uniform(0, 255, (8, 24, 24, 1)).astype("float32")
    model.save(tmp_path / "model.keras")
    again = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_body_without_pretrained_weights_trains_from_its_first_layer():
    model = classifier("mobilenet_v3_small")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 24, 24, 1)).astype("float32")
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = variables(model.get_layer("backbone"))
    model.fit(x, np.arange(8) % 4, epochs=1, batch_size=8, verbose=0)
    after = variables(model.get_layer("backbone"))
    # Every kernel trains, the first convolution's too, and the statistics follow the batch.
    unchanged = {path for path in before if np.array_equal(before[path], after[path])}
    assert not any(path.endswith(("kernel", "moving_mean", "moving_variance"))
                   for path in unchanged), sorted(unchanged)


def preprocessed(model, pixels):
    probe = keras.Model(model.inputs, model.get_layer("preprocess").output)
    return keras.ops.convert_to_numpy(probe(pixels))


@pytest.mark.slow  # building a backbone takes seconds on JAX
def test_mobilenet_v2_sees_minus_one_to_one():
    model = classifier("mobilenet_v2", input_shape=(32, 32, 3))
    pixels = np.zeros((1, 32, 32, 3), np.float32)
    pixels[0, 0, 0] = [0.0, 127.5, 255.0]
    np.testing.assert_allclose(preprocessed(model, pixels)[0, 0, 0], [-1.0, 0.0, 1.0], atol=1e-6)


@pytest.mark.slow  # building a backbone takes seconds on JAX
def test_resnet50_sees_caffe_bgr_minus_the_imagenet_mean():
    model = classifier("resnet50", input_shape=(32, 32, 3))
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    expected = pixels[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(preprocessed(model, pixels), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.slow  # building a backbone takes seconds on JAX
def test_a_weights_file_loads_into_the_body(tmp_path):
    body = keras.applications.MobileNetV3Small(include_top=False, weights=None,
                                               input_shape=(32, 32, 3))
    path = tmp_path / "body.weights.h5"
    body.save_weights(path)
    model = build_model(ModelConfig(architecture="mobilenet_v3_small", backbone_weights=str(path)),
                        (32, 32, 3), 4)
    for loaded, saved in zip(model.get_layer("backbone").weights, body.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded),
                                      keras.ops.convert_to_numpy(saved))


@pytest.mark.slow
def test_imagenet_weights_without_network_are_one_line(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
                        "[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UserError) as error:
        build_model(ModelConfig(architecture="mobilenet_v3_small"), (32, 32, 3), 4)
    message = str(error.value)
    assert "\n" not in message and "no network?" in message and "~/.keras/models" in message


@pytest.mark.parametrize(("overrides", "message"), [
    (["training.fine_tune.epochs=2"], "training.fine_tune needs a pretrained body"),
    (["model.architecture=transfer"], "architecture 'transfer' needs model.backbone"),
    (["model.architecture=mobilenet_v2", "model.backbone_weights=/no/such.h5"],
     "neither imagenet, none nor an existing weights file"),
    (["model.architecture=mobilenet_v2", "model.input_size=[16, 16]"], "model.input_size"),
    (["model.architecture=mobilenet_v2", "model.input_size=[64]"], "must be [height, width]"),
    (["model.architecture=mlp", "model.backbone_weights=none"], "does not apply to architecture"),
    (["model.architecture=transfer", "model.backbone=/no/run"], "neither a .keras file"),
])
def test_backbone_configuration_errors_are_one_line(overrides, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(overrides=overrides)


class LayersAtEachFitEnd(keras.callbacks.Callback):
    """Keeps the variables of the named layers at the end of each `fit`: of each phase."""

    def __init__(self, *names):
        super().__init__()
        self.names, self.snapshots = names, []

    def on_train_end(self, logs=None):
        self.snapshots.append({name: variables(self.model.get_layer(name))
                               for name in self.names})


@pytest.mark.slow
def test_frozen_phase_keeps_the_body_and_its_statistics_then_the_top_block_trains(tmp_path):
    body = keras.applications.MobileNetV3Small(include_top=False, weights=None,
                                               input_shape=(32, 32, 3))
    weights = tmp_path / "body.weights.h5"
    body.save_weights(weights)
    config = resolve_config(load_config(overrides=[
        "model.architecture=mobilenet_v3_small", f"model.backbone_weights={weights}",
        "training.epochs=1", "training.fine_tune.epochs=1", "training.fine_tune.unfreeze=1",
        "training.verbose=0", "training.batch_size=128"]), "phase-two")
    dataset = load_dataset(config.data, seed=0)
    model = build_compiled_model(config, dataset)
    before = {name: variables(model.get_layer(name)) for name in ("backbone", "logits")}
    phase_ends = LayersAtEachFitEnd("backbone", "logits")
    result, _ = fit_configured(model, config, dataset, callbacks=[phase_ends])
    assert len(result.history["loss"]) == 2 and len(phase_ends.snapshots) == 2

    # Phase one: the head trains; the body and its statistics stay as they were.
    first = phase_ends.snapshots[0]
    assert all(np.array_equal(before["backbone"][path], value)
               for path, value in first["backbone"].items())
    assert not all(np.array_equal(before["logits"][path], value)
                   for path, value in first["logits"].items())

    # Phase two with the top block: it trains; the blocks below and every BatchNormalization
    # statistic stay as they were.
    after = phase_ends.snapshots[1]["backbone"]
    changed = {path for path in after if not np.array_equal(before["backbone"][path], after[path])}
    from models.backbones import backbone_blocks

    backbone = model.get_layer("backbone")
    top_block = {variable.path for layer in backbone_blocks(model, "mobilenet_v3_small")[-1]
                 for variable in layer.weights}
    normalization = {variable.path for layer in backbone._flatten_layers()
                     if isinstance(layer, keras.layers.BatchNormalization)
                     for variable in layer.weights}
    assert changed and changed <= top_block and not changed & normalization


@pytest.mark.slow
def test_fit_transfers_the_body_of_a_run_and_fine_tunes_it(run_cli, runs_dir):
    fit(run_cli, "model.architecture=cnn", "training.epochs=2", "output.name=source",
        "output.timestamp=false")
    source = runs_dir / "source"
    fit(run_cli, "model.architecture=transfer", "model.width=null", f"model.backbone={source}",
        "training.epochs=2", "training.fine_tune.epochs=2", "output.name=transferred",
        "output.timestamp=false")
    metrics = json.loads((runs_dir / "transferred" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4
    history = (runs_dir / "transferred" / "history.csv").read_text().splitlines()
    assert len(history) == 5  # a header and 4 epochs, numbered on across the phases
    model = keras.saving.load_model(runs_dir / "transferred" / "best.keras")
    source_model = keras.saving.load_model(source / "best.keras")
    assert model.get_layer("backbone").count_params() == source_model.count_params() - \
        source_model.get_layer("logits").count_params()


def test_a_body_that_cannot_take_the_data_is_one_line():
    with pytest.raises(UserError, match="takes 1 or 3 channels; got 2; use data it can take"):
        classifier("mobilenet_v3_small", input_shape=(32, 32, 2))
