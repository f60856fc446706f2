"""Healing: after factorising, train only the new factors to give the original model's predictions.

The original (dense) model is the teacher: on calibration text, the factorised model is trained
to minimise KL(teacher || student) of the next-token distributions at every position, which
asks more of it than the text's own tokens would (the whole distribution, not one label per
position) and needs no labels. Only the factor parameters train (and, with `norms`, the
attention's q/k norms); everything else stays as it was. It runs on the shared training loop
(`tjdkit.training.loop`): accelerate, atomic best/ and last/ checkpoints, resume, metrics.

Healing never makes the model worse than it was: afterwards the perplexity on held-out windows of
the calibration text is measured before and after, and when healing did not lower it, the
unhealed factors are put back and the result says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tjdkit.config import HealSection, TrainSection
from tjdkit.errors import TjdkitError

STATE = "heal_weights.safetensors"


def healing_parameters(model: nn.Module, norms: bool = False) -> dict[str, nn.Parameter]:
    """The parameters healing trains: those of factorised attention (Tucker factors, TPA factors)."""
    from tjdkit.factorize.convert import decoder_layers

    chosen: dict[str, nn.Parameter] = {}
    for index, layer in enumerate(decoder_layers(model)):
        attn = layer.self_attn
        prefix = f"layer{index}."
        if hasattr(attn, "tucker"):
            chosen.update({prefix + "tucker." + n: p for n, p in attn.tucker.named_parameters()})
        elif type(attn).__name__ == "LatentKVAttention":  # the value factors, and the q/k rows the kept pairs read
            chosen.update({prefix + n: p for n, p in attn.named_parameters() if n.startswith(("v_down", "v_up", "q_proj", "k_proj"))})
        elif type(attn).__name__ == "TpaAttention":
            chosen.update({prefix + n: p for n, p in attn.named_parameters() if not n.startswith(("o_proj", "q_norm", "k_norm"))})
        else:
            continue
        if norms:
            for name in ("q_norm", "k_norm"):
                if hasattr(attn, name):
                    chosen.update({prefix + name + "." + n: p for n, p in getattr(attn, name).named_parameters()})
    return chosen


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student); logits [..., V] -> scalar, in float32."""
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)
    student = F.log_softmax(student_logits.float(), dim=-1)
    return F.kl_div(student.flatten(0, -2), teacher.flatten(0, -2), log_target=True, reduction="batchmean")


def _windows(ids: torch.Tensor, window: int) -> list[torch.Tensor]:
    """Non-overlapping windows [window] of ids [1, n]; a last short one is dropped."""
    flat = ids[0]
    return [flat[start : start + window] for start in range(0, flat.shape[0] - window + 1, window)]


@dataclass
class HealResult:
    steps: int
    seconds: float
    kl_before: float  # held-out distillation KL of the unhealed model
    kl_after: float  # ... of the model kept (healed, or unhealed when healing did not help)
    perplexity_before: float  # on the held-out calibration windows
    perplexity_after: float
    kept: bool  # False: healing did not lower the held-out perplexity, the unhealed factors are back
    run_dir: str
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "history"}


class HealJob:
    """The loop's `Job` for distillation: the student trains, the teacher only predicts."""

    score_key = "eval_kl"

    def __init__(self, student: nn.Module, teacher: nn.Module, train: list[torch.Tensor], held: list[torch.Tensor],
                 norms: bool, info: dict):
        self.module = student
        self.teacher = teacher
        self.train = train
        self.held = held
        self.size = len(train)
        self.info = info
        self.trainable = healing_parameters(student, norms)
        for parameter in student.parameters():
            parameter.requires_grad_(False)
        for parameter in self.trainable.values():
            parameter.requires_grad_(True)

    def train_mode(self, module: nn.Module) -> None:
        module.eval()  # no dropout: the student should match the teacher's eval-mode predictions

    def loss(self, module: nn.Module, step: int, batch_index: list[int]) -> tuple[torch.Tensor, int, dict]:
        device = next(module.parameters()).device
        ids = torch.stack([self.train[i] for i in batch_index]).to(device)  # [B, T]
        with torch.no_grad():
            teacher = self.teacher(input_ids=ids, use_cache=False).logits
        student = module(input_ids=ids, use_cache=False).logits
        return distillation_kl(student, teacher), int(ids.numel()), {}

    @torch.no_grad()
    def evaluate(self, module: nn.Module) -> dict[str, float]:
        return {"eval_kl": held_out_kl(module, self.teacher, self.held)}

    def save(self, directory: Path, module: nn.Module, info: dict, trainer_state: Optional[dict]) -> None:
        import json

        from safetensors.torch import save_file

        from tjdkit.fileio import atomic_directory, save_state_tree
        from tjdkit.training.runs import TRAINER_STATE

        with atomic_directory(directory) as tmp:
            save_file({n: p.detach().contiguous().cpu().clone() for n, p in self.trainable.items()}, str(tmp / STATE))
            (tmp / "info.json").write_text(json.dumps(info, default=str))
            if trainer_state is not None:
                save_state_tree(tmp, TRAINER_STATE, trainer_state)

    def restore(self, directory: Path, module: nn.Module) -> None:
        load_healed(directory, self.trainable)


def load_healed(directory: Path, trainable: dict[str, nn.Parameter]) -> None:
    """Put a checkpoint's healed parameters back into `trainable` (names must match exactly)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(Path(directory) / STATE))
    except (OSError, SafetensorError) as exc:
        raise TjdkitError(f"corrupt or missing healing checkpoint in {directory}: {exc}") from None
    if set(state) != set(trainable):
        raise TjdkitError(f"the healing checkpoint in {directory} is of another factorisation (its parameters differ)")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(state[name])


@torch.no_grad()
def held_out_kl(student: nn.Module, teacher: nn.Module, held: list[torch.Tensor]) -> float:
    device = next(student.parameters()).device
    total = 0.0
    for ids in held:
        ids = ids[None].to(device)
        total += float(distillation_kl(student(input_ids=ids, use_cache=False).logits, teacher(input_ids=ids, use_cache=False).logits))
    return total / max(len(held), 1)


@torch.no_grad()
def windows_perplexity(model: nn.Module, held: list[torch.Tensor]) -> float:
    from tjdkit.factorize.texts import perplexity

    import math

    logs = [math.log(perplexity(model, ids[None])) for ids in held]
    return math.exp(sum(logs) / max(len(logs), 1))


def heal(
    student: nn.Module,
    teacher: nn.Module,
    tokenizer,
    settings: HealSection,
    calibration: str,
    run_dir: Path,
    *,
    seed: int = 0,
    resume: bool = False,
    on_event: Optional[Callable[[dict], None]] = None,
) -> HealResult:
    """Distil `teacher` into the factorised `student` for settings.tokens tokens of `calibration` text."""
    from accelerate import Accelerator

    from tjdkit.factorize.texts import calibration_ids
    from tjdkit.training.loop import read_resume_state, run_loop, tracker_options

    if settings.tokens < settings.window:
        raise TjdkitError(f"--heal {settings.tokens}: heal at least one window of {settings.window} tokens")
    resume_state = read_resume_state(run_dir) if resume else None
    ids = calibration_ids(calibration, tokenizer, settings.tokens + settings.eval_tokens)
    windows = _windows(ids, settings.window)
    n_held = max(1, settings.eval_tokens // settings.window)
    if ids.shape[1] < settings.tokens + settings.eval_tokens or len(windows) <= n_held:
        raise TjdkitError(
            f"the calibration text has {ids.shape[1]} tokens: too few to heal on {settings.tokens} and hold out "
            f"{settings.eval_tokens} (use a larger --calibration text or fewer --heal tokens)"
        )
    train, held = windows[:-n_held], windows[-n_held:]
    job = HealJob(student, teacher, train, held, settings.norms, {"kind": "heal", "window": settings.window})
    if not job.trainable:
        raise TjdkitError("nothing to heal: no factorised attention in the model (--materialize writes dense weights)")
    teacher.eval().requires_grad_(False)
    unhealed = {n: p.detach().clone() for n, p in job.trainable.items()}
    kl_before = held_out_kl(student, teacher, held)
    perplexity_before = windows_perplexity(student, held)

    train_settings = TrainSection(
        epochs=1,
        max_steps=max(1, len(train) // settings.batch_size),
        batch_size=settings.batch_size,
        lr=settings.lr,
        warmup_steps=min(10, max(1, len(train) // settings.batch_size) // 10),
        eval_every=settings.eval_every,
        save_every=settings.eval_every,
        seed=seed,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        report_to=settings.report_to,
    )
    device = next(student.parameters()).device
    accelerator = Accelerator(cpu=device.type == "cpu", **tracker_options(train_settings, run_dir))
    started = time.perf_counter()
    result = run_loop(job, train_settings, run_dir, f"heal: {settings}\n", accelerator=accelerator,
                      resume_state=resume_state, on_event=on_event)
    seconds = time.perf_counter() - started
    best = Path(run_dir) / "best"
    if (best / STATE).is_file():
        load_healed(best, job.trainable)
    student.requires_grad_(False)
    perplexity_after = windows_perplexity(student, held)
    kept = perplexity_after <= perplexity_before
    if not kept:
        with torch.no_grad():
            for name, parameter in job.trainable.items():
                parameter.copy_(unhealed[name])
        perplexity_after = perplexity_before
    kl_after = held_out_kl(student, teacher, held)
    return HealResult(result.steps, seconds, kl_before, kl_after, perplexity_before, perplexity_after, kept,
                      str(run_dir), result.history)


def heal_factorized(
    report,
    student: nn.Module,
    teacher: nn.Module,
    tokenizer,
    settings: HealSection,
    run_dir: Path,
    *,
    seed: int = 0,
    resume: bool = False,
    on_event: Optional[Callable[[dict], None]] = None,
) -> HealResult:
    """Heal a model `factorize_model` just produced and complete its report: perplexity dense ->
    factorised -> healed, all three on the report's own held-out tokens, in this one run."""
    from tjdkit.factorize.texts import heldout_ids, perplexity

    result = heal(student, teacher, tokenizer, settings, report.options.calibration, run_dir,
                  seed=seed, resume=resume, on_event=on_event)
    if report.eval_tokens:
        report.perplexity_healed = perplexity(student, heldout_ids(tokenizer, report.eval_tokens))
    report.heal = result.to_dict()
    return result
