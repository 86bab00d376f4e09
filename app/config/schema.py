"""The schema of a run's configuration: one dataclass per section, with defaults and ranges.

Every field is an `option` (see `app.config.validation`): its type, default and accepted
values. Rules that involve several keys of a section are its `check(prefix)` method. The
keys that a schedule, an optimizer or an architecture takes come from their tables
(`app.tables`), which also supply the choices of `schedule.name`, `optimizer.name` and
`model.architecture`.
"""

import dataclasses
from pathlib import Path
from typing import Optional

from app.config.validation import option
from app.errors import UserError
from app.execution import check_steps_per_execution
from app.tables.architectures import APPLICATIONS as BACKBONE_ARCHITECTURES
from app.tables.architectures import ARCHITECTURES, SIZES
from app.tables.optimizers import OPTIMIZERS
from app.tables.schedules import SCHEDULES, WARMUP_SCHEDULES

# Keys that were renamed, with their new name: an old configuration gets a pointed message.
MOVED_KEYS = {
    "optimizer.learning_rate": "schedule.lr",
    "schedule.warmup_epochs": "schedule.warmup",
    "schedule.min_learning_rate": "schedule.min_lr",
    "schedule.decay_rate": "schedule.gamma",
}
# The rules of `callbacks.suggest_learning_rate`, here so that configurations and the
# command line are checked before Keras starts.
LR_FINDER_RULES = ("valley", "steepest", "minimum")
TUNERS = ("random", "hyperband", "bayesian")
DISTRIBUTION_STRATEGIES = ("none", "mirrored", "tpu", "data-parallel", "model-parallel")
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from and how it is split.

    `source` is a bundled scikit-learn dataset name (`digits`, `iris`, `wine`,
    `breast_cancer`) or a path: a `.npz` file, a `.csv` file, or a folder of images with
    one subfolder per class. The split is drawn with `split_seed`, or `seed` when it is
    `null`: fixing it varies only the training seed (`distill` uses the teacher's split).
    `on_bad_image` says what an unreadable image in a folder does (stop, or be skipped and
    counted); `duplicates` what identical samples in two splits do (seed 004's leakage).
    `cache` says where an image folder's decoded images live during training: `none`
    (decoded again for every batch by `workers` threads), `memory`, or `disk` (a
    memory-mapped copy under `cache_dir`, reused by later runs); an uncompressed `.npz` is
    memory-mapped unless `cache` is `memory`.
    """

    source: str = option("digits")
    label_column: str = option("label")
    x_key: str = option("x")
    y_key: str = option("y")
    image_size: Optional[list[int]] = option(None)
    color_mode: str = option("grayscale", choices=["grayscale", "rgb"])
    validation_fraction: float = option(0.15, low=0.0, high=1.0, low_open=True, high_open=True)
    test_fraction: float = option(0.15, low=0.0, high=1.0, low_open=True, high_open=True)
    split_seed: Optional[int] = option(None, low=0)
    normalize: bool = option(True)
    on_bad_image: str = option("error", choices=["error", "skip"])
    duplicates: str = option("warn", choices=["error", "warn", "drop"])
    cache: str = option("none", choices=["none", "memory", "disk"])
    cache_dir: Optional[str] = option(None)
    workers: Optional[int] = option(None, low=1)

    def check(self, prefix):
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise UserError(
                f"{prefix}validation_fraction + {prefix}test_fraction must be < 1 to leave "
                f"training data; got {self.validation_fraction} + {self.test_fraction}"
            )
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise UserError(f"{prefix}image_size must be [height, width]; got {self.image_size}")


@dataclasses.dataclass
class AugmentationConfig:
    """Random changes to training images, drawn anew for every batch (seed 004: "never the
    same input twice"), built from Keras's preprocessing layers (`app.augmentation`).

    Magnitudes are fractions as in Keras's layers: `rotation` of a full turn, `translation`
    and `zoom` of the image size, `contrast` and `brightness` of the value range, `noise`
    the standard deviation of Gaussian noise as a fraction of the value range, `erasing` the
    probability of erasing a rectangle, `randaugment` the magnitude of two RandAugment
    operations per image. `mixup` and `cutmix` are the α of their Beta distribution (0 is
    off; with both, each batch takes one of them at random). Validation, test, `best.keras`
    and exported models never see any of it.
    """

    flip: str = option("none", choices=["none", "horizontal", "vertical", "both"])
    rotation: float = option(0.0, low=0.0, high=0.5)
    translation: float = option(0.0, low=0.0, high=1.0)
    zoom: float = option(0.0, low=0.0, high=1.0, high_open=True)
    contrast: float = option(0.0, low=0.0, high=1.0)
    brightness: float = option(0.0, low=0.0, high=1.0)
    noise: float = option(0.0, low=0.0)
    erasing: float = option(0.0, low=0.0, high=1.0)
    randaugment: float = option(0.0, low=0.0, high=1.0)
    mixup: float = option(0.0, low=0.0)
    cutmix: float = option(0.0, low=0.0, high=1.0)

    @property
    def enabled(self):
        return self.flip != "none" or any(
            getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "flip")

    @property
    def mixes(self):
        """Whether training targets are soft (MixUp or CutMix)."""
        return bool(self.mixup or self.cutmix)


@dataclasses.dataclass
class ModelConfig:
    """Which model to build. `width`, `depth` and `filters` override the size preset.

    A pretrained body (`mobilenet_v2`, ..., `resnet50`) takes `backbone_weights`
    (`imagenet`, `none` or a weights file) and `input_size` ([height, width] the body
    sees); `transfer` takes `backbone`, a run directory or a `.keras` file whose body it
    reuses. Both get a new head (pooling, `dropout`, logits).
    """

    architecture: str = option("mlp", choices=ARCHITECTURES.names())
    size: str = option("teacher", choices=SIZES)
    width: Optional[int] = option(None, low=1)
    depth: Optional[int] = option(None, low=1)
    filters: Optional[int] = option(None, low=1)
    activation: str = option(
        "relu", choices=["relu", "gelu", "silu", "elu", "selu", "tanh", "sigmoid", "leaky_relu"]
    )
    initializer: str = option(
        "he_normal",
        choices=["he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "lecun_normal"],
    )
    normalization: str = option("batch", choices=["batch", "layer", "none"])
    dropout: float = option(0.1, low=0.0, high=1.0, high_open=True)
    l1: float = option(0.0, low=0.0)
    l2: float = option(0.0, low=0.0)
    num_classes: Optional[int] = option(None, low=2)
    backbone_weights: Optional[str] = option(None)
    input_size: Optional[list[int]] = option(None, low=32)
    backbone: Optional[str] = option(None)

    def check(self, prefix):
        ARCHITECTURES.check(self, prefix)
        if self.input_size is not None and len(self.input_size) != 2:
            raise UserError(f"{prefix}input_size must be [height, width]; got {self.input_size}")
        weights = self.backbone_weights
        if weights not in (None, "imagenet", "none") and not Path(weights).is_file():
            raise UserError(f"{prefix}backbone_weights {weights!r} is neither imagenet, none nor "
                            "an existing weights file")
        if self.backbone is not None:
            source = Path(self.backbone)
            if not (source.suffix == ".keras" and source.is_file()) and not (
                    source / "best.keras").is_file():
                raise UserError(f"{prefix}backbone {self.backbone!r} is neither a .keras file "
                                "nor a run directory with best.keras")


@dataclasses.dataclass
class OptimizerConfig:
    """The optimizer. Unset (`null`) parameters take Keras's default for that optimizer.

    The learning rate is `schedule.lr`. `lookahead` wraps the optimizer in
    `callbacks.Lookahead` (every `lookahead_sync_period` updates, the slow weights move
    `lookahead_step_size` of the way to the fast ones).
    """

    name: str = option("adam", choices=sorted(OPTIMIZERS.names()))
    weight_decay: Optional[float] = option(None, low=0.0)
    momentum: Optional[float] = option(None, low=0.0, high=1.0, high_open=True)
    nesterov: Optional[bool] = option(None)
    beta_1: Optional[float] = option(None, low=0.0, high=1.0, high_open=True)
    beta_2: Optional[float] = option(None, low=0.0, high=1.0, high_open=True)
    epsilon: Optional[float] = option(None, low=0.0, low_open=True)
    rho: Optional[float] = option(None, low=0.0, high=1.0, high_open=True)
    amsgrad: Optional[bool] = option(None)
    centered: Optional[bool] = option(None)
    initial_accumulator_value: Optional[float] = option(None, low=0.0)
    lookahead: bool = option(False)
    lookahead_sync_period: int = option(5, low=1)
    lookahead_step_size: float = option(0.5, low=0.0, high=1.0, low_open=True)

    def check(self, prefix):
        OPTIMIZERS.check(self, prefix)


@dataclasses.dataclass
class PlateauConfig:
    """Reduce the learning rate when `monitor` stops improving (`callbacks.ReduceLROnPlateau`).

    Works with every schedule: it then scales the schedule's output.
    """

    enabled: bool = option(False)
    monitor: str = option("val_loss", choices=MONITORS)
    mode: str = option("auto", choices=["auto", "min", "max"])
    factor: float = option(0.1, low=0.0, high=1.0, low_open=True, high_open=True)
    patience: int = option(5, low=0)
    threshold: float = option(1e-4, low=0.0)
    threshold_mode: str = option("rel", choices=["rel", "abs"])
    cooldown: int = option(0, low=0)
    min_lr: float = option(0.0, low=0.0)


@dataclasses.dataclass
class ScheduleConfig:
    """The learning rate and how it changes over training.

    `lr` is the constant, initial or peak rate: a number, `null` (Keras's default for the
    optimizer) or `auto` (the LR finder's suggestion by `lr_rule`). Lengths (`warmup`, `step_size`,
    `milestones`, `t_max`, `t_0`, `step_size_down`) count `unit`s: `epochs` (fractions
    allowed) or optimizer `updates`. Schedule-specific keys left `null` take the defaults in
    the README; setting one that does not apply to `name` is an error.
    """

    name: str = option("constant", choices=SCHEDULES.names())
    lr: Optional[float] = option(None, low=0.0, low_open=True, keywords=["auto"])
    lr_rule: str = option("valley", choices=LR_FINDER_RULES)
    unit: str = option("epochs", choices=["epochs", "updates"])
    warmup: float = option(0.0, low=0.0)
    warmup_start_factor: float = option(0.0, low=0.0, high=1.0)
    gamma: Optional[float] = option(None, low=0.0, low_open=True)
    step_size: Optional[float] = option(None, low=0.0, low_open=True)
    step_size_down: Optional[float] = option(None, low=0.0, low_open=True)
    milestones: Optional[list[float]] = option(None, low=0.0)
    t_max: Optional[float] = option(None, low=0.0, low_open=True)
    power: Optional[float] = option(None, low=0.0)
    t_0: Optional[float] = option(None, low=0.0, low_open=True)
    t_mult: Optional[int] = option(None, low=1)
    min_lr: Optional[float] = option(None, low=0.0)
    cyclic_mode: Optional[str] = option(None, choices=["triangular", "triangular2", "exp_range"])
    pct_start: Optional[float] = option(None, low=0.0, high=1.0)
    anneal_strategy: Optional[str] = option(None, choices=["cos", "linear"])
    div_factor: Optional[float] = option(None, low=0.0, low_open=True)
    final_div_factor: Optional[float] = option(None, low=0.0, low_open=True)
    three_phase: Optional[bool] = option(None)
    plateau: PlateauConfig = dataclasses.field(default_factory=PlateauConfig)

    def check(self, prefix):
        SCHEDULES.check(self, prefix, required_hint=f" (in {prefix}unit: {self.unit})")
        if self.warmup > 0 and self.name not in WARMUP_SCHEDULES:
            raise UserError(f"{prefix}warmup does not apply to {self.name!r}, which warms up "
                            f"by itself; set {prefix}warmup to 0")
        if self.name == "multistep" and not self.milestones:
            raise UserError(f"{prefix}milestones must list at least one step")
        if self.name == "cyclic" and isinstance(self.lr, float) and self.min_lr is not None \
                and self.min_lr >= self.lr:
            raise UserError(f"cyclic: {prefix}min_lr must be below {prefix}lr; "
                            f"got {self.min_lr} and {self.lr}")


@dataclasses.dataclass
class FineTuneConfig:
    """Fine-tuning a pretrained body in two phases (Keras's transfer-learning guide, fastai's
    `fine_tune`): `training.epochs` with the body frozen and only the head training, then
    `epochs` more with the top `unfreeze` blocks of the body (`null`: all) training at
    `lr_factor` × the rate. BatchNormalization layers stay frozen and in inference mode.
    `epochs: null` trains the whole model from the start; `0` trains only the head."""

    epochs: Optional[int] = option(None, low=0)
    unfreeze: Optional[int] = option(None, low=1)
    lr_factor: float = option(0.1, low=0.0, high=1.0, low_open=True)

    @property
    def enabled(self):
        return self.epochs is not None


@dataclasses.dataclass
class PruningConfig:
    """Magnitude pruning during `fit` (`callbacks.MagnitudePruning`): from `begin_epoch` to
    `end_epoch` (`null`: three quarters of `training.epochs`) the smallest kernel weights are
    removed every `frequency` batches until `sparsity` of them are zero (Zhu & Gupta's cubic
    schedule); the epochs after it fine-tune the pruned network. `n_of_m: [2, 4]` keeps the 2
    largest of every 4 inputs instead of a sparsity. The best epoch and early stopping count
    only epochs after `end_epoch`, when the network is as sparse as it will be."""

    sparsity: Optional[float] = option(None, low=0.0, high=1.0, high_open=True)
    initial_sparsity: float = option(0.0, low=0.0, high=1.0, high_open=True)
    begin_epoch: int = option(0, low=0)
    end_epoch: Optional[int] = option(None, low=1)
    frequency: int = option(50, low=1)
    scope: str = option("layer", choices=["layer", "global"])
    block_size: Optional[int] = option(None, low=2)
    n_of_m: Optional[list[int]] = option(None)

    @property
    def enabled(self):
        return self.sparsity is not None or self.n_of_m is not None

    def check(self, prefix):
        if self.sparsity is not None and self.n_of_m is not None:
            raise UserError(f"set {prefix}sparsity or {prefix}n_of_m, not both")
        if self.n_of_m is not None and (len(self.n_of_m) != 2
                                        or not 0 < self.n_of_m[0] < self.n_of_m[1]):
            raise UserError(f"{prefix}n_of_m must be [n, m] with 0 < n < m, e.g. [2, 4]; "
                            f"got {self.n_of_m}")
        if self.block_size is not None and self.n_of_m is not None:
            raise UserError(f"set {prefix}block_size or {prefix}n_of_m, not both")
        if self.sparsity is not None and self.initial_sparsity > self.sparsity:
            raise UserError(f"{prefix}initial_sparsity must not exceed {prefix}sparsity; got "
                            f"{self.initial_sparsity} and {self.sparsity}")

    def epochs(self, training_epochs):
        """`(begin_epoch, end_epoch)` with the default end filled in."""
        end = self.end_epoch or max(self.begin_epoch + 1, round(0.75 * training_epochs))
        return self.begin_epoch, end


@dataclasses.dataclass
class TrainingConfig:
    """The training loop. At most one of the three clipping keys may be set. `precision`
    computes in 16 bits with float32 weights (`mixed_float16` scales the loss);
    `steps_per_execution` and `jit_compile` are Keras's, `auto` picking per backend and per
    callback (see `app.execution`)."""

    epochs: int = option(100, low=1)
    batch_size: int = option(64, low=1)
    label_smoothing: float = option(0.0, low=0.0, high=1.0, high_open=True)
    accumulation_steps: int = option(1, low=1)
    accumulation_schedule: Optional[list[list[int]]] = option(None)
    accumulation_adaptive: bool = option(False)
    clip_value: Optional[float] = option(None, low=0.0, low_open=True)
    clip_norm: Optional[float] = option(None, low=0.0, low_open=True)
    global_clip_norm: Optional[float] = option(None, low=0.0, low_open=True)
    verbose: int = option(1, choices=[0, 1, 2])
    noise_scale: bool = option(False)
    nan_guard: bool = option(True, keywords=["exact"])
    precision: str = option("float32", choices=PRECISIONS)
    steps_per_execution: int = option("auto", low=1, keywords=["auto"])
    jit_compile: bool = option("auto", keywords=["auto"])
    # `fit` saves the training state at every epoch's end, and within an epoch this often.
    checkpoint_minutes: Optional[float] = option(None, low=0.0, low_open=True)
    fine_tune: FineTuneConfig = dataclasses.field(default_factory=FineTuneConfig)
    pruning: PruningConfig = dataclasses.field(default_factory=PruningConfig)

    def check(self, prefix):
        schedule = self.accumulation_schedule or []
        if any(len(pair) != 2 or pair[0] < 1 or pair[1] < 1 for pair in schedule):
            raise UserError(f"{prefix}accumulation_schedule must list [epoch, steps] pairs with "
                            f"epoch >= 1 and steps >= 1, e.g. [[1, 1], [10, 4]]; got {schedule}")
        if self.accumulation_adaptive and not self.noise_scale:
            raise UserError(f"{prefix}accumulation_adaptive follows the gradient noise scale; "
                            f"set {prefix}noise_scale: true too")
        clipping = [name for name in ("clip_value", "clip_norm", "global_clip_norm")
                    if getattr(self, name) is not None]
        if self.pruning.enabled and self.fine_tune.enabled:
            raise UserError(f"{prefix}pruning prunes the layers that train, and fine-tuning "
                            f"freezes the body for its first phase: fine-tune first, then "
                            f"prune the run with python -m app prune RUN_DIR --sparsity S")
        if self.pruning.enabled:
            begin, end = self.pruning.epochs(self.epochs)
            if not begin < end <= self.epochs:
                raise UserError(f"{prefix}pruning needs begin_epoch < end_epoch <= "
                                f"{prefix}epochs; got {begin}, {end} and {self.epochs}")
        check_steps_per_execution(self, prefix)
        if len(clipping) > 1:
            raise UserError(f"set at most one of {prefix}clip_value, {prefix}clip_norm and "
                            f"{prefix}global_clip_norm; got {', '.join(clipping)}")


@dataclasses.dataclass
class EarlyStoppingConfig:
    """Early stopping (`callbacks.EarlyStopping`). `monitor` also selects `best.keras`."""

    enabled: bool = option(True)
    monitor: str = option("val_loss", choices=MONITORS)
    mode: str = option("auto", choices=["auto", "min", "max"])
    patience: int = option(10, low=0)
    min_delta: float = option(0.0, low=0.0)
    min_delta_mode: str = option("absolute", choices=["absolute", "relative"])
    start_from_epoch: int = option(0, low=0)
    check_finite: bool = option(True)
    stopping_threshold: Optional[float] = option(None)
    divergence_threshold: Optional[float] = option(None)


@dataclasses.dataclass
class OutputConfig:
    """Where the run directory goes: `<dir>/<name>-<timestamp>/`, or `<dir>/<name>/`."""

    dir: str = option("runs")
    name: Optional[str] = option(None)
    timestamp: bool = option(True)

    def check(self, prefix):
        if self.name is not None and ("/" in self.name or self.name.startswith(".")):
            raise UserError(f"{prefix}name must be a plain folder name; got {self.name!r}")


@dataclasses.dataclass
class TuningConfig:
    """How `python -m app tune` explores the `search` space (see the README).

    `max_trials` bounds random and Bayesian searches; Hyperband's brackets follow from
    `training.epochs` and `hyperband_factor`. `trials_per_process` runs that many trials in
    each fresh worker process (`0`: all in one process); `null` means 10 on TensorFlow, whose
    memory grows with every trial, and 0 on JAX and PyTorch.
    """

    tuner: str = option("random", choices=TUNERS)
    max_trials: int = option(10, low=1)
    objective: str = option("val_loss", choices=["val_loss", "val_accuracy"])
    executions_per_trial: int = option(1, low=1)
    hyperband_factor: int = option(3, low=2)
    max_consecutive_failed_trials: int = option(3, low=1)
    trials_per_process: Optional[int] = option(None, low=0)


@dataclasses.dataclass
class DistributionConfig:
    """Training on several devices: `none`, `mirrored` or `tpu` (TensorFlow), `data-parallel`
    or `model-parallel` (JAX). `training.batch_size` is the global batch, split over the
    devices (over the mesh's `batch` axis for `model-parallel`). `tpu` names the Cloud TPU to
    connect to (`null`: the TPU VM's own chips). `mesh` (`{batch: B, model: M}`, null: one
    batch row) and `layout` (`{pattern: [axes]}`, null: kernels split along `model`) are
    `model-parallel`'s (see `app.distribution.model_parallel_layout`)."""

    strategy: str = option("none", choices=DISTRIBUTION_STRATEGIES)
    tpu: Optional[str] = option(None)
    mesh: Optional[dict] = option(None)
    layout: Optional[dict] = option(None)

    def check(self, prefix):
        for key in ("mesh", "layout"):
            if getattr(self, key) is not None and self.strategy != "model-parallel":
                raise UserError(f"{prefix}{key} is model-parallel's; set {prefix}strategy: "
                                f"model-parallel or drop {prefix}{key}")
        mesh = self.mesh
        if mesh is not None and (sorted(mesh) != ["batch", "model"] or not all(
                isinstance(size, int) and not isinstance(size, bool) and size >= 1
                for size in mesh.values())):
            raise UserError(f"{prefix}mesh must be {{batch: B, model: M}} with positive "
                            f"integers, e.g. {{batch: 2, model: 2}}; got {mesh}")


@dataclasses.dataclass
class DistillationConfig:
    """`python -m app distill`: the `model` section is the student (`model.size` defaults to
    `student` there), trained on α·CE(labels) + (1−α)·T²·KL(teacher ‖ student) at
    temperature T (Hinton et al., 2015). `alpha: 0` ignores the labels: function matching
    (Beyer et al., 2022), best with MixUp in `augmentation`. `feature_layers: [TEACHER_LAYER,
    STUDENT_LAYER]` adds similarity-preserving feature distillation (Tung & Mori, 2019)
    between two layers of any shapes, weighted by `feature_weight` beside the KL term."""

    temperature: float = option(4.0, low=0.0, low_open=True)
    alpha: float = option(0.1, low=0.0, high=1.0)
    feature_layers: Optional[list[str]] = option(None)
    feature_weight: float = option(3000.0, low=0.0)

    def check(self, prefix):
        if self.feature_layers is not None and len(self.feature_layers) != 2:
            raise UserError(f"{prefix}feature_layers must be [teacher_layer, student_layer]; "
                            f"got {self.feature_layers}")


@dataclasses.dataclass
class Config:
    """The whole configuration of a run. `search` maps dotted keys to the distributions that
    `python -m app tune` draws them from (`app.search_space`)."""

    seed: int = option(42, low=0)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augmentation: AugmentationConfig = dataclasses.field(default_factory=AugmentationConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    early_stopping: EarlyStoppingConfig = dataclasses.field(default_factory=EarlyStoppingConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    distribution: DistributionConfig = dataclasses.field(default_factory=DistributionConfig)
    tuning: TuningConfig = dataclasses.field(default_factory=TuningConfig)
    distillation: DistillationConfig = dataclasses.field(default_factory=DistillationConfig)
    search: dict = option({})

    def check(self, prefix):
        if self.training.fine_tune.enabled and not ARCHITECTURES.row(
                self.model.architecture).has_backbone:
            raise UserError(f"{prefix}training.fine_tune needs a pretrained body to freeze: "
                            f"model.architecture is {self.model.architecture!r}; use one of "
                            f"{', '.join(BACKBONE_ARCHITECTURES)} or transfer, or set "
                            f"{prefix}training.fine_tune.epochs to null")
