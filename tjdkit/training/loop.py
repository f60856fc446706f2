"""The training loop every tjdkit trainer shares: optimizer, schedule, checkpoints, metrics, resume.

A trainer supplies a `Job` (what trains, its loss, its held-out metrics, its checkpoint
format); `run_loop` does the rest the same way for all of them. Data order is a function
of (seed, epoch) and the torch RNG travels in last/, so a run resumed from last/
continues exactly where the killed one was, provided the job's loss depends only on
(step, batch_index, torch RNG). Under `accelerate launch` each step's batch is sliced
over the processes and DDP syncs the gradients of the whole `Job.module`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch

from tjdkit.config import TrainSection
from tjdkit.errors import TjdkitError
from tjdkit.fileio import atomic_write_text, load_state_tree, remove_stale_temp_dirs, user_errors
from tjdkit.training.runs import LEGACY_TRAINER_STATE, TRAINER_STATE, has_trainer_state

EventCallback = Optional[Callable[[dict], None]]


class Job(Protocol):
    """What one kind of training supplies to the shared loop.

    `train_mode` and `loss` get the prepared module (DDP-wrapped under several
    processes: its forward syncs gradients); `evaluate`, `save` and `restore` get the
    unwrapped `module` itself, so state dicts carry no wrapper prefixes.
    """

    module: torch.nn.Module  # everything that trains, as one module: accelerate prepares it, so DDP syncs all its gradients
    size: int  # number of training examples; the loop orders them per epoch (epoch_order) and slices batches
    score_key: str  # the key of evaluate()'s dict that picks the best checkpoint (lower is better), e.g. "eval_nll"
    info: dict  # written into every checkpoint's metadata (model name, dataset, ...)

    def train_mode(self, module: torch.nn.Module) -> None:
        """Called before every step, after evaluation left the module in eval mode: e.g. module.train()
        but keep a frozen backbone in eval mode."""

    def loss(self, module: torch.nn.Module, step: int, batch_index: list[int]) -> tuple[torch.Tensor, int, dict]:
        """The loss of one batch (examples batch_index, this process's share), the number of tokens it
        covered (for tokens/s), and extra fields for this step's metrics record (e.g. {"task": "mlm"})."""

    def evaluate(self, module: torch.nn.Module) -> dict[str, float]:
        """Held-out metrics, on the main process only (module is in eval mode); must contain score_key."""

    def save(self, directory: Path, module: torch.nn.Module, info: dict, trainer_state: Optional[dict]) -> None:
        """Write one complete checkpoint directory atomically (tjdkit.fileio.atomic_directory). When
        trainer_state is given, write it with fileio.save_state_tree(directory, TRAINER_STATE, ...):
        read_resume_state reads it there."""

    def restore(self, directory: Path, module: torch.nn.Module) -> None:
        """Load the weights of a checkpoint written by save() into module (before accelerate prepares it)."""


@dataclass
class LoopResult:
    steps: int  # the step the run ended at (total steps)
    best: Optional[float]  # best score_key value seen, None when never evaluated (or not the main process)
    history: list = field(default_factory=list)  # this run's metrics records (main process)
    resumed_from: int = 0
    last_eval: dict = field(default_factory=dict)  # the last evaluate() result, {} if none


def run_loop(
    job: Job,
    settings: TrainSection,
    run_dir: Path,
    recipe_yaml: str,
    *,
    accelerator,
    resume_state: Optional[dict] = None,
    on_event: EventCallback = None,
    before_first_step: Optional[Callable[[], None]] = None,
) -> LoopResult:
    """Train `job` as `settings` say; recipe.yaml, metrics.jsonl, best/ and last/ land in `run_dir`.

    AdamW over the module's trainable parameters with a linear warm-up/decay (lr_factor) and
    gradient clipping. Evaluates every settings.eval_every steps and at the end, saving best/
    when the score improves; saves last/ every settings.save_every steps and at the end, with
    the trainer state (step, best, optimizer, schedule, torch RNG) that resume_state (from
    read_resume_state) puts back. Events: {"kind": "resume", "step"} and, per step,
    {"kind": "step", "total", **record}. `before_first_step` runs after restore, prepare and
    the run directory's setup, before the clock starts (so slow set-up work, such as a
    feature cache, stays out of tokens/s and ETA).
    """
    emit = on_event or (lambda _event: None)
    t = settings
    run_dir = Path(run_dir)
    trainable = [p for p in job.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    world = accelerator.num_processes
    accum = t.gradient_accumulation_steps
    per_step = t.batch_size * world * accum  # the effective batch: examples behind one optimizer step
    steps_per_epoch = math.ceil(job.size / per_step)
    total_steps = t.max_steps or steps_per_epoch * t.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, t.warmup_steps, total_steps))

    step, best = 0, math.inf
    if resume_state is not None:
        job.restore(resume_state["last_dir"], job.module)
        optimizer.load_state_dict(resume_state["optimizer"])
        schedule.load_state_dict(resume_state["schedule"])
        torch.set_rng_state(resume_state["torch_rng"])
        step, best = resume_state["step"], resume_state["best"]
        emit({"kind": "resume", "step": step})
    module, optimizer = accelerator.prepare(job.module, optimizer)
    inner = accelerator.unwrap_model(module)

    main = accelerator.is_main_process
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for checkpoint in ("best", "last"):
            remove_stale_temp_dirs(run_dir / checkpoint)  # left by a run killed while saving
        atomic_write_text(run_dir / "recipe.yaml", recipe_yaml)
        _truncate_metrics(metrics_path, step)
    tracking = bool(getattr(accelerator, "log_with", None))
    if tracking:
        _init_trackers(accelerator, settings, run_dir)
    if before_first_step is not None:
        before_first_step()

    history: list[dict] = []
    last_eval: dict = {}
    started, tokens_seen, started_step = time.time(), 0, step
    order_epoch, order = -1, []
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(job.size, t.seed, epoch)
        chunk = order[position * per_step : (position + 1) * per_step]
        micro = [chunk[i : i + t.batch_size * world] for i in range(0, len(chunk), t.batch_size * world)]
        job.train_mode(module)
        optimizer.zero_grad(set_to_none=True)
        step_loss, tokens = 0.0, 0
        for i, part in enumerate(micro):
            # Each micro-batch's mean loss weighed by its share of the step's examples: the summed gradients
            # are those of the mean loss over the whole effective batch. DDP syncs on the last one only.
            share = len(part) / len(chunk)
            syncing = contextlib.nullcontext() if i == len(micro) - 1 else accelerator.no_sync(module)
            with syncing:
                loss, part_tokens, extra = job.loss(module, step, part[accelerator.process_index :: world])
                accelerator.backward(loss if len(micro) == 1 else loss * share)
            step_loss += loss.item() * share
            tokens += part_tokens
        if t.grad_clip > 0:
            accelerator.clip_grad_norm_(trainable, t.grad_clip)
        optimizer.step()
        schedule.step()
        step += 1
        tokens_seen += tokens * world
        elapsed = time.time() - started
        record = {
            "step": step,
            "epoch": epoch,
            "processes": world,
            "loss": step_loss,
            "effective_batch": per_step,
            "lr": schedule.get_last_lr()[0],
            "tokens_per_second": tokens_seen / elapsed if elapsed > 0 else 0.0,
            "eta_seconds": elapsed / (step - started_step) * (total_steps - step),
            **extra,
        }
        evaluating = step % t.eval_every == 0 or step == total_steps
        if evaluating and main:
            inner.eval()
            last_eval = job.evaluate(inner)
            record.update(last_eval)
            score = last_eval[job.score_key]
            if score < best:
                best = score
                job.save(run_dir / "best", inner, {**job.info, "step": step, job.score_key: score}, None)
        if main and (step % t.save_every == 0 or step == total_steps):
            trainer_state = {
                "step": step,
                "best": best,
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            job.save(run_dir / "last", inner, {**job.info, "step": step}, trainer_state)
        if main:
            history.append(record)
            with user_errors(metrics_path), metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        if tracking:
            accelerator.log({key: value for key, value in record.items() if _is_number(value)}, step=step)
        emit({"kind": "step", "total": total_steps, **record})
    accelerator.wait_for_everyone()
    if tracking:
        accelerator.end_training()
    return LoopResult(step, best if best < math.inf else None, history, started_step, last_eval)


TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_report_to(report_to: str) -> None:
    """One clear line when --report-to names a tracker whose package is not installed (checked before anything slow)."""
    import importlib.util

    if report_to == "none":
        return
    if report_to not in TRACKER_PACKAGES:
        raise TjdkitError(f"unknown --report-to {report_to!r} (use tensorboard, wandb or none)")
    if not any(importlib.util.find_spec(name) for name in TRACKER_PACKAGES[report_to]):
        raise TjdkitError(f"--report-to {report_to} needs the {report_to} package: pip install 'tjdkit[{report_to}]'")


def tracker_options(settings: TrainSection, run_dir: Path) -> dict:
    """Accelerator(...) keywords that send the loop's metrics to settings.report_to; {} for none.

    wandb runs offline (files under the run directory) unless the user configured it (WANDB_MODE or
    WANDB_API_KEY set), so a training run never reaches the network on its own."""
    report_to = settings.report_to
    if report_to == "none":
        return {}
    check_report_to(report_to)
    if report_to == "wandb":
        if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
    return {"log_with": report_to, "project_dir": str(run_dir)}


def _init_trackers(accelerator, settings: TrainSection, run_dir: Path) -> None:
    """TensorBoard events land in RUN/tensorboard/, wandb's offline files in RUN/wandb/."""
    import dataclasses

    config = {key: value for key, value in dataclasses.asdict(settings).items() if value is not None}
    if settings.report_to == "wandb":
        accelerator.init_trackers("tjdkit", config=config, init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir)}})
    else:
        accelerator.init_trackers(settings.report_to, config=config)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def resume_dir(run_dir: Path) -> Path:
    """The last/ checkpoint --resume continues from, checked without loading its tensors (the CLI's
    early check): a pickled trainer_state.pt (older runs, or planted) is refused, never opened."""
    last = Path(run_dir) / "last"
    if not has_trainer_state(last):
        if (last / LEGACY_TRAINER_STATE).exists():
            raise TjdkitError(
                f"cannot resume {run_dir}: its trainer state is a pickle ({last / LEGACY_TRAINER_STATE}), which could run "
                "code when loaded and is not read; start the run again in a new --out"
            )
        raise TjdkitError(f"nothing to resume: {run_dir} has no last checkpoint with a trainer state ({last}/{TRAINER_STATE}.*)")
    return last


def read_resume_state(run_dir: Path) -> dict:
    """last/'s trainer state (safetensors + JSON), plus "last_dir": read before anything slow, so a bad
    --resume fails fast."""
    last = resume_dir(run_dir)
    try:
        state = load_state_tree(last, TRAINER_STATE)
        missing = [key for key in ("step", "best", "optimizer", "schedule", "torch_rng") if key not in state]
    except (ValueError, TypeError) as exc:
        raise TjdkitError(f"corrupt trainer state in {last}: {exc}") from None
    if missing:
        raise TjdkitError(f"corrupt trainer state in {last}: no {missing[0]}")
    return {**state, "last_dir": last}


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then linear decay to zero at the last step."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * max(0.0, 1.0 - step / max(total, 1))


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    """The examples' order in one epoch: a function of (seed, epoch) alone, so resume needs no data state."""
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def _truncate_metrics(path: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: drop them from metrics.jsonl."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
