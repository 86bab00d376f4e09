"""The leaderboard of a search: one row per trial, best first, as CSV and as a printed table.

```python
rows = leaderboard_rows(tuner.oracle, keys=["schedule.lr", "model.width"], trial_dir=...)
write_leaderboard_csv(rows, "leaderboard.csv")
print(format_leaderboard(rows))
```
"""

import csv
import math

from app.hypermodel import format_value, last_line, read_trial_summary


def leaderboard_rows(oracle, keys, trial_dir):
    """One dict per trial of `oracle`: completed trials by objective (best first), then the
    others in trial order.

    Args:
        oracle: a KerasTuner oracle holding the search's trials.
        keys: the searched configuration keys, in column order.
        trial_dir: a function from trial id to that trial's folder.
    """
    objective = oracle.objective.name
    sign = -1.0 if oracle.objective.direction == "max" else 1.0
    trials = sorted(oracle.trials.values(), key=lambda trial: int(trial.trial_id))
    completed = [trial for trial in trials if _scored(trial)]
    others = [trial for trial in trials if not _scored(trial)]
    rows = []
    for rank, trial in enumerate(sorted(completed, key=lambda trial: sign * trial.score), 1):
        rows.append(_row(trial, keys, objective, trial_dir, rank=rank))
    rows += [_row(trial, keys, objective, trial_dir, rank=None) for trial in others]
    return rows


def write_leaderboard_csv(rows, path):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def format_leaderboard(rows, limit=10):
    """The best `limit` rows as an aligned text table (the error message column left out)."""
    columns = [column for column in rows[0] if column != "message"]
    cells = [[_cell(row[column]) for column in columns] for row in rows[:limit]]
    widths = [max(len(column), *(len(line[index]) for line in cells))
              for index, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in cells]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in leaderboard.csv")
    return "\n".join(lines)


def _scored(trial):
    return trial.status == "COMPLETED" and trial.score is not None and math.isfinite(trial.score)


def _row(trial, keys, objective, trial_dir, rank):
    summary = read_trial_summary(trial_dir(trial.trial_id)) or {}
    values = trial.hyperparameters.values
    row = {"rank": rank if rank is not None else "", "trial": int(trial.trial_id) + 1,
           "status": trial.status.lower()}
    row.update({key: values.get(key, "") for key in keys})
    if "tuner/epochs" in values:  # Hyperband's budget for the trial
        row["budget_epochs"] = values["tuner/epochs"]
    row[objective] = trial.score if _scored(trial) else ""
    row["epochs"] = summary.get("epochs", "")
    row["seconds"] = summary.get("seconds", "")
    row["message"] = "" if trial.status == "COMPLETED" else last_line(trial.message)
    return row


def _cell(value):
    return format_value(value) if isinstance(value, float) else str(value)
