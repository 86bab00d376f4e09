"""The typed configuration of a run, split by concern:

- `app.config.schema`: the sections (dataclasses), their defaults, ranges and cross-key rules;
- `app.config.validation`: the generic engine that builds sections from YAML trees and words
  every error as one line naming the key (did-you-mean, renamed keys, accepted values);
- `app.config.loading`: files, `--set` overrides, defaults per command, YAML out, hashes;
- `app.config.search_space`: the `search` section that `tune` draws from.

```python
config = load_config("experiment.yaml", overrides=["training.epochs=20", "model.size=student"])
config.training.epochs  # 20
dump_config(config)     # YAML text that reproduces the run exactly
```
"""

from app.config.loading import config_hash, config_to_dict, dump_config, load_config, with_values
from app.config.schema import (DISTRIBUTION_STRATEGIES, LR_FINDER_RULES, MONITORS, TUNERS,
                               AugmentationConfig, Config, DataConfig, DistillationConfig,
                               DistributionConfig, EarlyStoppingConfig, ModelConfig,
                               OptimizerConfig, OutputConfig, PlateauConfig, ScheduleConfig,
                               TrainingConfig, TuningConfig)

__all__ = [
    "DISTRIBUTION_STRATEGIES",
    "LR_FINDER_RULES",
    "MONITORS",
    "TUNERS",
    "AugmentationConfig",
    "Config",
    "DataConfig",
    "DistillationConfig",
    "DistributionConfig",
    "EarlyStoppingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "OutputConfig",
    "PlateauConfig",
    "ScheduleConfig",
    "TrainingConfig",
    "TuningConfig",
    "config_hash",
    "config_to_dict",
    "dump_config",
    "load_config",
    "with_values",
]
