"""Checkpoints of any `Trainer` run, as transformers keeps its own in `trainer_utils.py`: the staged save (a checkpoint
written beside its final name and renamed once complete), the choice of the checkpoint to resume from (complete and
loadable, never a silent fresh start), and the record of the learning-rate arguments that a resumed run checks.
Shared by the CodeFusion and autoregressive runs, so it imports neither the CodeFusion model nor its pipeline."""

import errno
import json
import os
import re
import shutil
from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments
from transformers.trainer import OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCALER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging

from .hub_codefusion import check_readable
from .weights_checksum_codefusion import check_checksum

logger = logging.get_logger(__name__)

# `CodeFusionTrainer` writes `checkpoint-N` as `checkpoint-N.tmp/checkpoint-N` and renames it once complete. The
# suffix keeps the staging folder out of Trainer's and this package's Hub uploads, which skip `checkpoint-*`.
STAGING_SUFFIX = ".tmp"
CHECKPOINT_FOLDER = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
STAGING_FOLDER = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+){re.escape(STAGING_SUFFIX)}")
RNG_STATE_FILE = re.compile(r"rng_state(_\d+)?\.pth")  # `rng_state_<process>.pth` under several processes
# Free space under which a failed save counts as a full disk: torch.save and safetensors raise their own errors
# (torch's reads "unexpected pos ... vs ..."), not an OSError, once their writes have filled the disk.
FULL_DISK_BYTES = 1 << 20


def numbered_folders(folder: str, pattern: re.Pattern) -> dict[int, str]:
    """The folders in `folder` whose names match `pattern`, by the step number it captures."""
    matches = {name: pattern.fullmatch(name) for name in os.listdir(folder)}
    return {
        int(match.group(1)): os.path.join(folder, name)
        for name, match in matches.items()
        if match and os.path.isdir(os.path.join(folder, name))
    }


def remove_staging_folders(folder: str) -> None:
    """Remove the staging folders of saves into `folder` that never finished."""
    if os.path.isdir(folder):
        for staging_dir in numbered_folders(folder, STAGING_FOLDER).values():
            shutil.rmtree(staging_dir, ignore_errors=True)


def is_disk_full(error: Exception, folder: str) -> bool:
    """Whether `error`, raised while saving into `folder`, comes from a full disk (or quota): an OSError says so, the
    writers of torch and safetensors do not, so a disk left with under `FULL_DISK_BYTES` free counts too."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return os.path.isdir(folder) and shutil.disk_usage(folder).free < FULL_DISK_BYTES


def staging_paths(checkpoint: str) -> tuple[str, str]:
    """The staging folder of `checkpoint` (`checkpoint-N.tmp`) and the path inside it that the checkpoint is written
    to (`checkpoint-N.tmp/checkpoint-N`): Trainer saves into `<its run folder>/checkpoint-N`."""
    staging_dir = checkpoint + STAGING_SUFFIX
    return staging_dir, os.path.join(staging_dir, os.path.basename(checkpoint))


def full_disk_error(error: Exception, checkpoint: str) -> OSError | None:
    """The error to raise in place of `error`, raised while saving `checkpoint`, when it comes from a full disk
    (`is_disk_full`; ask before the partial files are removed), else None."""
    run_dir, name = os.path.split(checkpoint)
    if not is_disk_full(error, run_dir):
        return None
    return OSError(
        errno.ENOSPC,
        f"No space left on device to save {name} in {run_dir} ({error}): free some space there or choose another "
        "output_dir. The partial checkpoint was removed and any earlier one there is intact: resuming continues from "
        "the last of them.",
    )


def publish_staged(checkpoint: str) -> None:
    """Rename the complete staged copy of `checkpoint` into place and remove its staging folder. A folder already at
    `checkpoint` (a damaged one left by an earlier run, or Trainer's JIT checkpoint marker) is replaced."""
    staging_dir, staged = staging_paths(checkpoint)
    if os.path.isdir(checkpoint):
        shutil.rmtree(checkpoint)
    os.replace(staged, checkpoint)
    os.rmdir(staging_dir)


def check_loadable(path: str) -> None:
    """Raise an `OSError` naming `path` when a checkpoint file does not load: torch files (optimizer, schedule, random
    states) as Trainer loads them, their tensors memory-mapped rather than read; weights also by the sha256 recorded
    at save (Trainer's resume does not go through `from_pretrained`); the others by `check_readable`."""
    if not path.endswith((".pt", ".pth", ".bin")):
        check_readable(path)
        if path.endswith(".safetensors"):
            check_checksum(path)
        return
    try:
        with safe_globals():  # the numpy types of the random states
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # any load failure means a corrupted file
        raise OSError(f"{path} is corrupted: {error}") from None


def checkpoint_problem(checkpoint: str, args: TrainingArguments) -> str | None:
    """Why `checkpoint` cannot be resumed from (a file missing or unloadable), or None. Besides the model and
    Trainer state, the optimizer, schedule and random states are required unless `args.save_only_model` (Trainer
    saves none then): Trainer would resume without them in silence, with a fresh optimizer. Every file Trainer would
    load is checked when present."""
    names = set(os.listdir(checkpoint))
    optimizer = OPTIMIZER_NAME_BIN if OPTIMIZER_NAME_BIN in names else OPTIMIZER_NAME  # .bin: saved under FSDP
    rng_states = sorted(name for name in names if RNG_STATE_FILE.fullmatch(name)) or ["rng_state.pth"]
    training_state = [optimizer, SCHEDULER_NAME, *rng_states]
    required = [TRAINER_STATE_NAME, "config.json", "model.safetensors"]
    if not args.save_only_model:
        required += training_state
    missing = [name for name in required if name not in names]
    if missing:
        problem = f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        if set(training_state) <= set(missing):
            problem += " (saved with save_only_model=True? Pass --save_only_model True to resume with a new optimizer)"
        return problem
    for name in sorted(names & {*required, *training_state, SCALER_NAME, SCHEDULE_FILE}):
        try:
            check_loadable(os.path.join(checkpoint, name))
        except OSError as error:
            return str(error)
    return None


def find_resume_checkpoint(args: TrainingArguments) -> str | None:
    """The checkpoint to resume from: `args.resume_from_checkpoint` if given, which must be complete, else the last
    complete one in `args.output_dir`, with a warning naming the later ones skipped and why (a save that never
    finished, a file missing or unloadable). Never a silent fresh start or fresh optimizer: a damaged checkpoint
    given explicitly, or an `output_dir` none of whose checkpoints is complete, is an error."""
    if args.resume_from_checkpoint:
        checkpoint = args.resume_from_checkpoint
        if not os.path.isdir(checkpoint):
            raise ValueError(f"resume_from_checkpoint={checkpoint} does not exist.")
        problem = checkpoint_problem(checkpoint, args)
        if problem is not None:
            raise ValueError(
                f"Checkpoint {checkpoint} cannot be resumed from: {problem}. Pass another --resume_from_checkpoint, "
                "or none to resume from the last complete checkpoint in output_dir."
            )
    else:
        checkpoint = last_complete_checkpoint(args)
        if checkpoint is None:
            return None
    check_resumed_schedule(checkpoint, args)
    return checkpoint


def last_complete_checkpoint(args: TrainingArguments) -> str | None:
    """The last complete checkpoint in `args.output_dir` (see `find_resume_checkpoint`), or None when it has none."""
    if not os.path.isdir(args.output_dir):
        return None
    checkpoints = numbered_folders(args.output_dir, CHECKPOINT_FOLDER)
    skipped = []  # (step, folder, why)
    last_step = None
    for step in sorted(checkpoints, reverse=True):
        problem = checkpoint_problem(checkpoints[step], args)
        if problem is None:
            last_step = step
            break
        skipped.append((step, checkpoints[step], problem))
    skipped += [
        (step, staging_dir, "a save that never finished; delete it")
        for step, staging_dir in numbered_folders(args.output_dir, STAGING_FOLDER).items()
        if last_step is None or step > last_step
    ]
    reasons = "; ".join(f"{folder} ({why})" for _, folder, why in sorted(skipped, reverse=True))
    if last_step is None and checkpoints:
        raise ValueError(
            f"No checkpoint in {args.output_dir} can be resumed from: {reasons}. Repair them, pass "
            "--resume_from_checkpoint, or choose another output_dir to start afresh."
        )
    if last_step is None:
        if skipped:
            logger.warning(f"{args.output_dir} has no checkpoint to resume from, only {reasons}: starting afresh.")
        return None
    if skipped:
        logger.warning(f"Resuming from {checkpoints[last_step]}, the last complete checkpoint, skipping {reasons}.")
    return checkpoints[last_step]


# The arguments that shape the learning rate, recorded in every checkpoint (`schedule.json`) by
# `StagedCheckpointsMixin`, so that a resumed run can say what it does with changed ones.
SCHEDULE_ARGUMENTS = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "warmup_ratio",
    "max_steps",
    "num_train_epochs",
    "max_train_minutes",
    "lr_decay_minutes",
)
SCHEDULE_FILE = "schedule.json"


def schedule_arguments(args: TrainingArguments) -> dict[str, Any]:
    """The learning-rate arguments of `args`, as JSON values."""
    values = {name: getattr(args, name, None) for name in SCHEDULE_ARGUMENTS}
    return json.loads(json.dumps(values, default=lambda value: getattr(value, "value", str(value))))


def write_schedule_record(checkpoint: str, args: TrainingArguments) -> None:
    """Write the learning-rate arguments of `args` into `checkpoint`, so that resuming with other ones can say so."""
    with open(os.path.join(checkpoint, SCHEDULE_FILE), "w") as f:
        json.dump(schedule_arguments(args), f, indent=2)


def check_resumed_schedule(checkpoint: str, args: TrainingArguments) -> None:
    """Refuse, or say what resuming does with, learning-rate arguments that differ from the checkpoint's: Trainer
    restores the checkpoint's optimizer and schedule state, so another `learning_rate` would be silently ignored (an
    error), while the shape of the schedule (type, warmup, length, time budget) is rebuilt from the arguments given
    now (a warning)."""
    path = os.path.join(checkpoint, "scheduler.pt")
    base_rates = (torch.load(path, weights_only=True).get("base_lrs") or []) if os.path.isfile(path) else []
    if any(rate != args.learning_rate for rate in base_rates):
        raise ValueError(
            f"Resuming from {checkpoint}, whose learning-rate schedule starts from {base_rates[0]:g}, with "
            f"learning_rate={args.learning_rate:g}: Trainer restores a checkpoint's optimizer and schedule, so the "
            f"new rate would be ignored. Resume with --learning_rate {base_rates[0]:g}, or, to train at the new rate, "
            "start a new run in another output_dir from the pipeline this run saves when it ends "
            "(--model_name_or_path)."
        )
    record = os.path.join(checkpoint, SCHEDULE_FILE)
    if not os.path.isfile(record):
        return
    with open(record) as f:
        recorded = json.load(f)
    now = schedule_arguments(args)
    changed = [
        f"{name}: {recorded[name]!r} -> {now[name]!r}"
        for name in SCHEDULE_ARGUMENTS
        if name != "learning_rate" and name in recorded and recorded[name] != now[name]
    ]
    if changed:
        logger.warning(
            f"Resuming from {checkpoint} with other schedule arguments ({'; '.join(changed)}): the first step "
            "keeps the rate the checkpoint's schedule had set, and from the next one the schedule follows the new "
            "values (Trainer builds it from the arguments given now) at the checkpoint's base learning rate."
        )


class StagedCheckpointsMixin:
    """Checkpoints of a `Trainer` (mixed in before it) written into a staging folder and renamed once complete, with
    the learning-rate arguments a resumed run checks (`schedule.json`): used by `CodeFusionTrainer` and the
    autoregressive baseline's trainer alike."""

    # The folder `_save_checkpoint` is writing into, while it does.
    _staging_dir: str | None = None

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Trainer's checkpoint, written into a staging folder (`checkpoint-N.tmp`) and renamed to `checkpoint-N`
        once complete: Trainer writes in place, so a run killed or out of disk space during a save would leave a
        `checkpoint-N` that looks like the last one. A save that fails removes its staging folder, and says so when
        the disk is full. Rotation (`save_total_limit`), the best checkpoint and Hub pushes see finished folders."""
        run_dir = self._get_output_dir(trial)
        checkpoint = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        staging_dir, staged = staging_paths(checkpoint)
        if self.args.should_save:
            remove_staging_folders(run_dir)  # left by killed saves: only one save runs at a time
        self.accelerator.wait_for_everyone()  # before any process writes its random states into the staging folder
        self._staging_dir = staging_dir
        try:
            super()._save_checkpoint(model, trial)  # into `staged`, through `_get_output_dir`
            if self.state.best_model_checkpoint == staged:
                self.state.best_model_checkpoint = checkpoint
                if self.args.should_save:  # Trainer saved the staging path as the best one
                    self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            if self.args.should_save:
                write_schedule_record(staged, self.args)
        except Exception as error:
            disk_full = full_disk_error(error, checkpoint)  # before the partial files are removed
            if self.args.should_save:
                shutil.rmtree(staging_dir, ignore_errors=True)
            if disk_full is not None:
                raise disk_full from error
            raise
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every process's files are in the staging folder
        if not self.args.should_save:
            return
        publish_staged(checkpoint)
        if self.args.push_to_hub:
            self._push_from_checkpoint(checkpoint)
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def _get_output_dir(self, trial: Any) -> str:
        """Trainer's run folder, or while `_save_checkpoint` writes a checkpoint, its staging folder: Trainer saves
        into `<this folder>/checkpoint-N`."""
        return self._staging_dir or super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer's push of a checkpoint, skipped while it is staged: `_save_checkpoint` pushes the renamed one (an
        upload runs in the background, and would lose its files to the rename)."""
        if self._staging_dir is None:
            super()._push_from_checkpoint(checkpoint_folder)


__all__ = ["StagedCheckpointsMixin", "find_resume_checkpoint", "last_complete_checkpoint", "write_schedule_record"]
