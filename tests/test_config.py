from pathlib import Path

import pytest
import yaml

from app.config import Config, config_hash, config_to_dict, dump_config, load_config
from app.errors import UserError


def test_defaults_and_non_defaults_round_trip_through_yaml(tmp_path):
    assert load_config() == Config()
    config = load_config(overrides=["schedule.name=cosine", "schedule.t_max=3.5",
                                    "optimizer.name=sgd", "optimizer.momentum=0.9",
                                    "training.accumulation_schedule=[[1, 2], [5, 4]]",
                                    "data.image_size=[16, 16]", "search={model.width: {choice: [8, 16]}}"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config != Config()


def test_file_and_overrides_are_applied_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  epochs: 7\n  batch_size: 16\nmodel:\n  size: student\n")
    config = load_config(path, ["training.epochs=3", "schedule.lr=1e-3",
                                "data.image_size=[16, 16]"])
    assert config.training.epochs == 3
    assert config.training.batch_size == 16
    assert config.model.size == "student"
    # PyYAML reads 1e-3 as text; a float key accepts it as a number.
    assert config.schedule.lr == pytest.approx(1e-3)
    assert config.data.image_size == [16, 16]


def test_learning_rate_may_be_auto_and_round_trips(tmp_path):
    config = load_config(overrides=["schedule.lr=auto", "schedule.name=one_cycle",
                                    "schedule.pct_start=0.2", "schedule.plateau.enabled=true"])
    assert config.schedule.lr == "auto"
    assert config.schedule.plateau.enabled
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_dump_round_trips_exactly(tmp_path):
    config = load_config(overrides=["training.label_smoothing=0.1", "optimizer.name=sgd",
                                    "optimizer.momentum=0.9", "schedule.name=cosine"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
    assert config_hash(load_config(path)) == config_hash(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["training.epoch=3"], "unknown config key 'training.epoch'; did you mean 'epochs'?"),
        (["trainning.epochs=3"], "unknown config key 'trainning'"),
        (["training.epochs=-1"], "training.epochs must be >= 1; got -1"),
        (["training.epochs=2.5"], "training.epochs must be an integer; got 2.5"),
        (["training.epochs=true"], "training.epochs must be an integer; got True"),
        (["training.batch_size=many"], "training.batch_size must be an integer"),
        (["optimizer.name=lbfgs"], "optimizer.name must be one of"),
        (["schedule.lr=0"], "schedule.lr must be > 0.0"),
        (["schedule.lr=fast"], "schedule.lr must be a number or null or auto; got 'fast'"),
        (["optimizer.learning_rate=0.1"], "config key 'optimizer.learning_rate' is now 'schedule.lr'"),
        (["schedule.name=cosine", "schedule.step_size=3"],
         "schedule.step_size does not apply to schedule 'cosine' (it takes: min_lr, t_max)"),
        (["schedule.name=step"], "schedule 'step' needs schedule.step_size (in schedule.unit: epochs)"),
        (["schedule.name=multistep", "schedule.milestones=[]"], "schedule.milestones must list"),
        (["schedule.name=one_cycle", "schedule.warmup=2"], "schedule.warmup does not apply to 'one_cycle'"),
        (["schedule.name=cyclic", "schedule.step_size=2", "schedule.lr=0.01", "schedule.min_lr=0.1"],
         "cyclic: schedule.min_lr must be below schedule.lr"),
        (["schedule.unit=steps"], "schedule.unit must be one of epochs, updates"),
        (["training.accumulation_schedule=[[0, 2]]"], "must list [epoch, steps] pairs"),
        (["training.accumulation_schedule=[1, 2]"], "training.accumulation_schedule must be"),
        (["training.accumulation_adaptive=true"], "set training.noise_scale: true too"),
        (["schedule.milestones=[3, -1]", "schedule.name=multistep"], "schedule.milestones must be >= 0.0"),
        (["schedule.plateau.factor=1.5"], "schedule.plateau.factor must be > 0.0 and < 1.0"),
        (["schedule.name=cosine_restarts", "schedule.t_0=2", "schedule.t_mult=1.5"],
         "schedule.t_mult must be an integer or null"),
        (["model.dropout=1.0"], "model.dropout must be >= 0.0 and < 1.0"),
        (["training.label_smoothing=-0.1"], "training.label_smoothing must be >= 0.0"),
        (["data.test_fraction=0.6", "data.validation_fraction=0.5"], "must be < 1"),
        (["data.image_size=[8]"], "data.image_size must be [height, width]"),
        (["optimizer.name=adam", "optimizer.momentum=0.9"],
         "optimizer.momentum does not apply to optimizer 'adam'"),
        (["training.clip_norm=1", "training.clip_value=1"], "set at most one of"),
        (["training=5"], "training must be a mapping"),
        (["epochs"], "--set 'epochs' must look like section.key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError) as raised:
        load_config(overrides=overrides)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epochs: [3\n")
    with pytest.raises(UserError, match=r"not valid YAML at line \d+"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must be a mapping of sections"):
        load_config(path)


def test_the_readme_configuration_reference_lists_every_default():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```yaml\nseed: 42\n", 1)[1].split("```", 1)[0]
    reference = yaml.safe_load("seed: 42\n" + block)
    assert reference == config_to_dict(load_config())
