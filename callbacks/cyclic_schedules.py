"""Schedules that rise and fall: PyTorch's `CyclicLR` and `OneCycleLR`."""

import keras
from keras import ops

from callbacks.schedule_math import check_positive, cosine_fraction, float_step, power

CYCLIC_MODES = ("triangular", "triangular2", "exp_range")
ANNEAL_STRATEGIES = ("cos", "linear")


@keras.saving.register_keras_serializable(package="efficient_learning")
class CyclicLR(keras.optimizers.schedules.LearningRateSchedule):
    """Cycles between `base_lr` and `max_lr` (Smith, "Cyclical Learning Rates", 2017).

    Equal to `torch.optim.lr_scheduler.CyclicLR` stepped once per update. Each cycle rises
    linearly for `step_size_up` steps and falls for `step_size_down`; the amplitude is kept
    (`triangular`), halved every cycle (`triangular2`) or multiplied by `gamma` every step
    (`exp_range`).

    Args:
        base_lr: the lowest learning rate of a cycle.
        max_lr: the highest learning rate of the first cycle.
        step_size_up: steps from `base_lr` to `max_lr`.
        step_size_down: steps back down; `None` means `step_size_up`.
        mode: `"triangular"`, `"triangular2"` or `"exp_range"`.
        gamma: the per-step amplitude factor of `exp_range`.
        name: the schedule's name.

    Example:

    ```python
    schedule = CyclicLR(1e-4, 1e-2, step_size_up=4 * steps_per_epoch, mode="triangular2")
    ```
    """

    def __init__(self, base_lr, max_lr, step_size_up=2000, step_size_down=None,
                 mode="triangular", gamma=1.0, name="CyclicLR"):
        super().__init__()
        if mode not in CYCLIC_MODES:
            raise ValueError(f"mode must be one of {', '.join(CYCLIC_MODES)}; got {mode!r}")
        check_positive("step_size_up", step_size_up)
        if step_size_down is not None:
            check_positive("step_size_down", step_size_down)
        check_positive("gamma", gamma)
        self.base_lr = base_lr
        self.max_lr = max_lr
        self.step_size_up = step_size_up
        self.step_size_down = step_size_down
        self.mode = mode
        self.gamma = gamma
        self.name = name

    def __call__(self, step):
        step = float_step(step)
        up = float(self.step_size_up)
        down = float(self.step_size_down if self.step_size_down is not None else up)
        cycle_length = up + down
        completed_cycles = ops.floor(step / cycle_length)
        position = step - completed_cycles * cycle_length
        rise = ops.where(position <= up, position / up, (cycle_length - position) / down)
        if self.mode == "triangular":
            amplitude = 1.0
        elif self.mode == "triangular2":
            amplitude = power(0.5, completed_cycles)
        else:
            amplitude = power(self.gamma, step)
        return self.base_lr + (self.max_lr - self.base_lr) * rise * amplitude

    def get_config(self):
        return {"base_lr": self.base_lr, "max_lr": self.max_lr,
                "step_size_up": self.step_size_up, "step_size_down": self.step_size_down,
                "mode": self.mode, "gamma": self.gamma, "name": self.name}


@keras.saving.register_keras_serializable(package="efficient_learning")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """The one-cycle policy (Smith & Topin, "Super-Convergence", 2019), as torch's `OneCycleLR`.

    Warms up from `max_lr / div_factor` to `max_lr` over the first `pct_start` of
    `total_steps`, then anneals to `max_lr / (div_factor · final_div_factor)`. With
    `three_phase=True` it comes back down to the initial rate symmetrically before the final
    annealing. Equal to PyTorch's for steps `0..total_steps`; afterwards it holds the value of
    step `total_steps`.

    Args:
        max_lr: the peak learning rate.
        total_steps: the number of updates of the run.
        pct_start: the fraction of the run spent warming up.
        anneal_strategy: `"cos"` or `"linear"`.
        div_factor: `max_lr / initial learning rate`.
        final_div_factor: `initial learning rate / final learning rate`.
        three_phase: whether to use the three-phase variant.
        name: the schedule's name.

    Example:

    ```python
    schedule = OneCycle(1e-2, total_steps=epochs * steps_per_epoch)
    ```
    """

    def __init__(self, max_lr, total_steps, pct_start=0.3, anneal_strategy="cos",
                 div_factor=25.0, final_div_factor=1e4, three_phase=False, name="OneCycle"):
        super().__init__()
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1; got {total_steps!r}")
        if not 0 <= pct_start <= 1:
            raise ValueError(f"pct_start must be in [0, 1]; got {pct_start!r}")
        if anneal_strategy not in ANNEAL_STRATEGIES:
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear'; got {anneal_strategy!r}")
        check_positive("div_factor", div_factor)
        check_positive("final_div_factor", final_div_factor)
        self.max_lr = max_lr
        self.total_steps = int(total_steps)
        self.pct_start = pct_start
        self.anneal_strategy = anneal_strategy
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.three_phase = three_phase
        self.name = name

    def phases(self):
        """`(start_step, end_step, start_lr, end_lr)` of each phase, as PyTorch computes them."""
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        warm_end = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            ends = [warm_end, float(2 * self.pct_start * self.total_steps) - 2,
                    self.total_steps - 1]
            rates = [initial, self.max_lr, initial, final]
        else:
            ends = [warm_end, self.total_steps - 1]
            rates = [initial, self.max_lr, final]
        starts = [0.0] + ends[:-1]
        return [(starts[i], ends[i], rates[i], rates[i + 1]) for i in range(len(ends))]

    def __call__(self, step):
        # PyTorch steps up to total_steps (extrapolating the last phase); later steps hold
        # that rate where PyTorch raises.
        step = ops.minimum(float_step(step), float(self.total_steps))
        value = None
        # PyTorch uses the first phase whose end is >= step, else the last one.
        for start, end, start_lr, end_lr in reversed(self.phases()):
            phase_value = self._anneal(step, start, end, start_lr, end_lr)
            value = phase_value if value is None else ops.where(step <= end, phase_value, value)
        return value

    def _anneal(self, step, start, end, start_lr, end_lr):
        length = end - start
        if length == 0:  # PyTorch raises ZeroDivisionError here; the phase is a jump to its end.
            return ops.full_like(step, end_lr)
        # Add a positive amount to the lower of the two rates, so that float32 never
        # subtracts nearly equal numbers (the final rate is 1e-5 of the peak by default).
        if start_lr <= end_lr:
            low, elapsed = start_lr, step - start
        else:
            low, elapsed = end_lr, end - step  # steps still to go down to end_lr
        if self.anneal_strategy == "cos":
            fraction = cosine_fraction(elapsed, length)
        else:
            fraction = elapsed / length
        return low + abs(end_lr - start_lr) * fraction

    def get_config(self):
        return {"max_lr": self.max_lr, "total_steps": self.total_steps,
                "pct_start": self.pct_start, "anneal_strategy": self.anneal_strategy,
                "div_factor": self.div_factor, "final_div_factor": self.final_div_factor,
                "three_phase": self.three_phase, "name": self.name}
