"""Run-keeping for any `Trainer`, as transformers' `trainer_callback.py` beside its Trainer: the time budget (its
argument check and its callbacks), the record of the learning-rate arguments in each checkpoint, and the warning about
emulated bf16. Shared by the CodeFusion and autoregressive runs, so it imports neither the CodeFusion model nor its
pipeline."""

import platform
import time

import torch
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)


def warn_if_cpu_bf16_is_emulated(args: TrainingArguments) -> None:
    """bf16 autocast on a CPU without AVX512-BF16 or AMX is emulated, many times slower than fp32 (see
    research/NOTES.md), so a time-limited run would train for a fraction of its steps without any error."""
    if not args.bf16 or platform.machine().lower() not in ("x86_64", "amd64"):  # the check knows x86 CPUs only
        return
    on_cpu = args.use_cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    if on_cpu and not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        logger.warning(
            "bf16=True on a CPU without native bf16 (no AVX512-BF16 or AMX): PyTorch emulates it, and training runs "
            "many times slower than in fp32. Pass --bf16 False."
        )


def check_time_budget(max_train_minutes: float | None, lr_decay_minutes: float | None) -> None:
    """The arguments' own check of `lr_decay_minutes`, which decays over the end of `max_train_minutes`."""
    if lr_decay_minutes is None:
        return
    if max_train_minutes is None:
        raise ValueError("lr_decay_minutes needs max_train_minutes: it decays over the end of that time budget.")
    if not 0 < lr_decay_minutes <= max_train_minutes:
        raise ValueError(
            f"lr_decay_minutes={lr_decay_minutes} must be positive and at most max_train_minutes={max_train_minutes}."
        )


class TimeLimitCallback(TrainerCallback):
    """
    Ends training, with a final checkpoint (evaluated when the run evaluates), once `max_train_minutes` of wall time
    have passed in this run. With `lr_decay_minutes`, the learning rate of the schedule is also scaled down linearly
    to 0 over the last `lr_decay_minutes` of the budget: a run that stops on the clock cannot know its step count,
    so a step-based decaying schedule cannot end on time, and a constant rate leaves the gain of annealing on the
    table. The clock is the main process's, broadcast at every step, so every process stops at the same step with
    the same rate.
    """

    def __init__(self, max_train_minutes: float, lr_decay_minutes: float | None = None):
        check_time_budget(max_train_minutes, lr_decay_minutes)
        self.max_seconds = max_train_minutes * 60
        self.decay_seconds = None if lr_decay_minutes is None else lr_decay_minutes * 60
        self.start = None
        self.elapsed = 0.0

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.start = time.monotonic()
        self.elapsed = 0.0
        if self.decay_seconds is None:
            return
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(
                f"lr_decay_minutes scales a LambdaLR schedule (every lr_scheduler_type of transformers but "
                f"reduce_lr_on_plateau), got {type(scheduler).__name__}: choose another lr_scheduler_type."
            )
        scheduler.lr_lambdas = [
            lambda step, schedule=schedule: schedule(step) * self.lr_factor() for schedule in scheduler.lr_lambdas
        ]

    def lr_factor(self) -> float:
        """1 until the last `lr_decay_minutes` of the budget, then down linearly to 0 at its end."""
        return min(1.0, max(0.0, (self.max_seconds - self.elapsed) / self.decay_seconds))

    def on_optimizer_step(self, args, state, control, **kwargs):
        """Read the clock between the optimizer's step and the schedule's, which sets the next step's rate."""
        (self.elapsed,) = broadcast_object_list([time.monotonic() - self.start])  # as is with one process

    def on_step_end(self, args, state, control, **kwargs):
        if self.elapsed > self.max_seconds:
            logger.warning(
                f"max_train_minutes={args.max_train_minutes} reached at step {state.global_step}: stopping."
            )
            control.should_training_stop = True
            control.should_save = True
            # Evaluated too when the run evaluates: the last checkpoint, the most annealed, then counts for the best
            # model (load_best_model_at_end, early stopping) instead of being passed over for an earlier one.
            control.should_evaluate = args.eval_strategy != "no"


class TimeBudgetProgressCallback(ProgressCallback):
    """The training bar of a run with `max_train_minutes`: it counts the time budget in seconds, with the steps done
    beside it. A run that stops on the clock never reaches `max_steps`, so a bar of steps would show e.g. 0/100000
    and an estimate of days."""

    def __init__(self, max_train_minutes: float):
        super().__init__()
        self.budget_seconds = max_train_minutes * 60

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = tqdm(
                total=round(self.budget_seconds),
                unit="s",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]",
            )
        self.current_step = 0
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            elapsed = min(round(time.monotonic() - self.start), self.training_bar.total)
            self.training_bar.update(elapsed - self.training_bar.n)
            self.training_bar.set_postfix(step=state.global_step)
        self.current_step = state.global_step


__all__ = [
    "TimeBudgetProgressCallback",
    "TimeLimitCallback",
    "check_time_budget",
    "warn_if_cpu_bf16_is_emulated",
]
