"""The structure the rest builds on: the family tables (and the README's copies of them), the
shared staging of what commands write, and the commands' registration."""

import dataclasses
import os
import signal

import pytest

from app.cli import build_parser
from app.commands import COMMANDS
from app.config import ModelConfig, OptimizerConfig, ScheduleConfig, TrainingConfig
from app.errors import UserError
from app.rundir import Staging
from app.tables import REQUIRED, Derived
from app.tables.architectures import ARCHITECTURES
from app.tables.optimizers import OPTIMIZERS, build_optimizer
from app.tables.schedules import SCHEDULES, build_schedule
from tests.helpers import REPO

# Each table, the config section whose keys its rows take, and the keys every row takes.
FAMILIES = [
    (SCHEDULES, ScheduleConfig, {"name", "lr", "lr_rule", "unit", "warmup",
                                 "warmup_start_factor", "plateau"}),
    (OPTIMIZERS, OptimizerConfig, {"name", "weight_decay", "lookahead", "lookahead_sync_period",
                                   "lookahead_step_size"}),
    (ARCHITECTURES, ModelConfig, {"architecture", "size", "activation", "initializer",
                                  "normalization", "dropout", "l1", "l2", "num_classes"}),
]
IDS = [table.family for table, _, _ in FAMILIES]


@pytest.mark.parametrize("table, section, common", FAMILIES, ids=IDS)
def test_the_readme_shows_each_table_as_the_code_has_it(table, section, common):
    up_to_date = table.markdown() in (REPO / "README.md").read_text()
    assert up_to_date, f"README.md's {table.family} table is out of date: paste it from " \
                       "`python -m app.tables`"


@pytest.mark.parametrize("table, section, common", FAMILIES, ids=IDS)
def test_table_keys_and_section_fields_match(table, section, common):
    fields = {field.name for field in dataclasses.fields(section)}
    # Every key a row takes is a field, and every other field is used by some row.
    assert set(table.all_keys()) <= fields
    assert fields - common == set(table.all_keys())
    selector = next(field for field in dataclasses.fields(section) if field.name == table.selector)
    assert set(selector.metadata["choices"]) == set(table.names())


def _values_for(row):
    """A section with the row selected and its required keys set to workable values."""
    samples = {"step_size": 2.0, "milestones": [1.0, 3.0], "t_0": 2.0}
    return {key: samples[key] for key, default in row.keys.items() if default is REQUIRED}


@pytest.mark.parametrize("row", SCHEDULES.rows(), ids=SCHEDULES.names())
def test_every_schedule_row_builds_the_class_the_readme_names(row):
    config = ScheduleConfig(name=row.name, lr=0.1, **_values_for(row))
    SCHEDULES.check(config, "schedule.")
    schedule = build_schedule(config, steps_per_epoch=10, epochs=5)
    if row.name == "constant":
        assert schedule == 0.1
    else:
        assert type(schedule).__name__ in row.columns["class"]


@pytest.mark.parametrize("row", OPTIMIZERS.rows(), ids=OPTIMIZERS.names())
def test_every_optimizer_row_builds_its_class_with_its_keys(row):
    optimizer = build_optimizer(OptimizerConfig(name=row.name), TrainingConfig(), 0.01)
    assert f".{type(optimizer).__name__}`" in row.columns["class"]
    accepted = optimizer.get_config()
    assert all(key in accepted for key in row.keys)


def test_required_keys_and_keys_of_other_rows_are_refused_by_name():
    with pytest.raises(UserError, match=r"schedule 'step' needs schedule.step_size \(in"):
        ScheduleConfig(name="step").check("schedule.")
    with pytest.raises(UserError, match="model.filters does not apply to architecture 'mlp'"):
        ModelConfig(architecture="mlp", filters=8).check("model.")
    derived = [key for row in SCHEDULES.rows() for key, default in row.keys.items()
               if isinstance(default, Derived)]
    assert derived and not any(key in row.required() for row in SCHEDULES.rows() for key in derived)


def test_size_presets_fill_unset_keys_and_overrides_win():
    row = ARCHITECTURES.row("cnn")
    assert row.arguments(ModelConfig(architecture="cnn", size="student", width=7)) == {
        **row.presets["student"], "width": 7}


def test_staging_commits_in_one_step_and_an_error_leaves_nothing(tmp_path):
    final = tmp_path / "runs" / "run-1"
    with Staging(final) as staging:
        (staging.folder / "a.txt").write_text("a")
        assert not final.exists() and staging.folder.name == "run-1.partial"
        staging.commit()
    assert (final / "a.txt").read_text() == "a"
    with pytest.raises(RuntimeError), Staging(tmp_path / "runs" / "run-2") as staging:
        (staging.folder / "a.txt").write_text("a")
        raise RuntimeError("disk full")
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["run-1"]


def test_staging_refuses_a_final_path_that_appeared(tmp_path):
    final = tmp_path / "run"
    with pytest.raises(UserError, match="appeared while training"), Staging(final) as staging:
        final.mkdir()
        staging.commit()
    assert [path.name for path in tmp_path.iterdir()] == ["run"]


def test_a_named_staging_folder_survives_ctrl_c_when_asked(tmp_path):
    partial = tmp_path / "search.partial"
    with pytest.raises(KeyboardInterrupt), Staging(tmp_path / "search", folder=partial,
                                                   keep_on_interrupt=True):
        (partial / "state").write_text("trial 3")
        raise KeyboardInterrupt
    assert (partial / "state").read_text() == "trial 3"
    with pytest.raises(RuntimeError), Staging(tmp_path / "search", folder=partial,
                                              keep_on_interrupt=True):
        raise RuntimeError
    assert not partial.exists()


def test_merging_moves_entries_into_a_folder_or_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with Staging(tmp_path, merge=True) as staging:
        assert staging.folder.parent == tmp_path
        (staging.folder / "model.mlpackage").mkdir()
        (staging.folder / "model.json").write_text("{}")
        staging.commit()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "keep.txt", "model.json", "model.mlpackage"]
    with pytest.raises(UserError, match="model.json appeared"), \
            Staging(tmp_path, merge=True) as staging:
        (staging.folder / "other.json").write_text("{}")
        (staging.folder / "model.json").write_text("{}")
        staging.commit()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "keep.txt", "model.json", "model.mlpackage"]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.__name__.rsplit(".", 1)[-1] for c in COMMANDS])
def test_each_command_module_registers_its_handler(command, capsys):
    parser = build_parser()
    name = command.__name__.rsplit(".", 1)[-1].replace("_", "-")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([name, "--help"])
    assert exit_info.value.code == 0 and f"usage: app {name}" in capsys.readouterr().out
    required = {"evaluate": ["run"], "export": ["run"], "distill": ["--teacher", "run"],
                "make-dataset": ["shapes", "folder"], "prune": ["run", "--sparsity", "0.5"]}
    arguments = parser.parse_args([name, *required.get(name, [])])
    assert arguments.handler is command.handle


def test_ctrl_c_inside_staging_is_not_swallowed(tmp_path):
    with pytest.raises(KeyboardInterrupt), Staging(tmp_path / "run"):
        os.kill(os.getpid(), signal.SIGINT)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_staging_removes_the_folders_it_made_and_only_those(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(RuntimeError), Staging(kept / "runs" / "nested" / "run"):
        raise RuntimeError("failed")
    assert kept.is_dir() and list(kept.iterdir()) == []
    # A folder that holds something else stays.
    (kept / "runs").mkdir()
    (kept / "runs" / "other-run").mkdir()
    with pytest.raises(RuntimeError), Staging(kept / "runs" / "run"):
        raise RuntimeError("failed")
    assert [path.name for path in (kept / "runs").iterdir()] == ["other-run"]


def test_runs_started_together_claim_distinct_names_at_the_start(tmp_path):
    """The final name is claimed when the work starts (an exclusive mkdir of the staging
    folder), so four runs planned for the same name all finish, each under its own."""
    import contextlib

    planned = tmp_path / "runs" / "mlp-20261201-101500"
    with contextlib.ExitStack() as stack:
        stagings = [stack.enter_context(Staging(planned, renumber=True)) for _ in range(4)]
        assert len({staging.folder for staging in stagings}) == 4
        finals = [staging.commit() for staging in stagings]
    assert [path.name for path in finals] == [
        "mlp-20261201-101500", "mlp-20261201-101500-2", "mlp-20261201-101500-3",
        "mlp-20261201-101500-4"]
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == sorted(
        path.name for path in finals)
    # Without renumbering (output.timestamp: false), a name being written is refused at once.
    with Staging(tmp_path / "runs" / "fixed"):
        with pytest.raises(UserError, match=r"runs/fixed is taken \(by a finished run, or by "
                                            r"one still writing fixed\.partial\)"):
            Staging(tmp_path / "runs" / "fixed").__enter__()


def test_runs_lists_finished_and_partial_runs_and_removes_only_stopped_ones(tmp_path, run_cli):
    import json

    from app.resuming import save_training_state

    finished = tmp_path / "mlp-teacher-1"
    finished.mkdir()
    for name in ("config.yaml", "best.keras", "classes.json"):
        (finished / name).write_text("x")
    (finished / "metrics.json").write_text(json.dumps({
        "epochs_run": 23, "best": {"monitor": "val_loss", "value": 0.0812},
        "test": {"accuracy": 0.9778}}))
    killed = tmp_path / "mlp-teacher-2.partial"  # a run's staging folder, its process gone
    killed.mkdir()
    (killed / ".lock").write_text("")
    (killed / "config.yaml").write_text("early_stopping: {monitor: val_accuracy}\n")
    save_training_state(killed / "training_state.npz", _state_after(epochs=3))
    (tmp_path / "notes").mkdir()  # not a run: left out
    with Staging(tmp_path / "mlp-teacher-3") as running:
        code, out, err = run_cli("runs", str(tmp_path), "--remove-partial")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["name", "status", "epochs", "best", "test", "acc", "size"]
        assert lines[1].split()[:6] == ["mlp-teacher-1", "finished", "23", "val_loss",
                                        "0.0812", "0.9778"]
        assert lines[2].split()[:5] == ["mlp-teacher-2.partial", "stopped", "3",
                                        "val_accuracy", "0.9"]
        assert lines[3].split()[:2] == ["mlp-teacher-3.partial", "running"]
        assert lines[4] == "removed 1 stopped partial run(s): mlp-teacher-2.partial"
        assert not killed.exists() and running.folder.exists()
        running.commit()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "mlp-teacher-1", "mlp-teacher-3", "notes"]
    assert list((tmp_path / "mlp-teacher-3").iterdir()) == []  # the lock file left with it


def _state_after(epochs):
    """A training state as `fit` saves it after `epochs` epochs (no variables)."""
    from app.resuming import TrainingState

    return TrainingState(
        epoch=epochs, batch=0, phase=1, phase_start=0, stopped=False,
        history={"loss": [1.0] * epochs, "val_accuracy": [0.5, 0.9, 0.8][:epochs]},
        callbacks=[{"best_epoch": 2, "best_value": 0.9}], model_variables=[],
        optimizer_variables=[], metrics_variables=[], random_state=[], identity={})
