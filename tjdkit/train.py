"""One training loop for joint heads, on accelerate.

frozen: the backbone's hidden states are computed once and kept in memory, so every
epoch after the first costs only the head. last_layer,
lora, full: the backbone trains too, with its own next-token loss beside the head's, so
plain decoding keeps working. Data order and loss offsets are functions of (seed,
epoch, step), so a run resumed from its last checkpoint continues exactly where the
killed one was. `accelerate launch -m tjdkit train ...` shards each batch over processes.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from tjdkit.config import TrainRecipe
from tjdkit.data.examples import Example, collate, frequent_token_ids, load_examples, self_distill
from tjdkit.errors import TjdkitError
from tjdkit.evaluate import evaluate_nll, window_hidden
from tjdkit.fileio import atomic_write_text, remove_stale_temp_dirs
from tjdkit.recipes import dump_recipe
from tjdkit.runs import TRAINER_STATE, save_checkpoint
from tjdkit.windows import last_hidden, make_windows

EventCallback = Optional[Callable[[dict], None]]


# -- the head on its model --------------------------------------------------------------


def build_run_head(recipe: TrainRecipe, model, vocab_ids: Optional[torch.Tensor]):
    from tjdkit.heads import build_head

    h = recipe.head
    hidden_size, vocab_size = model.get_output_embeddings().weight.shape[1], model.get_output_embeddings().weight.shape[0]
    lm_head = model.get_output_embeddings().weight.detach().float() if h.init_from_lm_head else None
    if lm_head is not None and (h.embedding_dim or hidden_size) != hidden_size:
        lm_head = None
    return build_head(
        h.name,
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        rank=h.rank,
        horizon=h.horizon,
        positivity=h.positivity,
        embedding_dim=h.embedding_dim,
        draft_vocab=vocab_ids,
        lm_head_weight=lm_head,
        freeze_decoder=h.freeze_decoder,
    )


def check_head(recipe: TrainRecipe) -> None:
    """Fail before anything slow: the head constructors' own checks, on a 1-dimensional head."""
    from tjdkit.heads import build_head

    h = recipe.head
    build_head(h.name, hidden_size=1, vocab_size=2, rank=h.rank, horizon=h.horizon, positivity=h.positivity)


def prepare_backbone(model, mode: str, lora_rank: int):
    """Set which backbone weights train; lora wraps the model with peft adapters."""
    for parameter in model.parameters():
        parameter.requires_grad_(mode == "full")
    if mode == "last_layer":
        blocks = getattr(model.base_model, "layers", None) or getattr(model.base_model, "h", None)
        if blocks is None:
            raise TjdkitError(f"backbone mode last_layer: cannot find the blocks of {type(model).__name__}")
        for parameter in blocks[-1].parameters():
            parameter.requires_grad_(True)
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules="all-linear", lora_dropout=0.0)
        model = get_peft_model(model, config)
    return model


class JointLoss(nn.Module):
    """Backbone + head in one module, so DDP syncs the gradients of both."""

    def __init__(self, model, head, lm_loss_weight: float, end_id: int):
        super().__init__()
        self.model = model
        self.head = head
        self.lm_loss_weight = lm_loss_weight
        self.end_id = end_id

    def forward(self, hidden=None, targets=None, ids=None, mask=None, every: int = 1, offset: int = 0):
        if hidden is not None:  # frozen: cached features
            return window_loss(self.head, hidden, targets), targets.numel()
        out = self.model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), output_hidden_states=True)
        windows = make_windows(ids, mask, self.head.horizon, every=every, offset=offset, end_id=self.end_id)
        loss = window_loss(self.head, window_hidden(out, windows), windows.targets)
        return loss + self.lm_loss_weight * out.loss, windows.targets.numel()


def window_loss(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean -log p(window) / H over windows whose targets the head can represent."""
    keep = head.in_vocab(targets).all(dim=1)
    if not keep.any():
        return hidden.sum() * 0.0
    return -head.log_prob(hidden[keep], targets[keep]).mean() / targets.shape[1]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then linear decay to zero at the last step."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * max(0.0, 1.0 - step / max(total, 1))


def epoch_order(count: int, seed: int, epoch: int) -> list[int]:
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def loss_offset(seed: int, step: int, horizon: int) -> int:
    return random.Random(seed * 7_919 + step).randrange(horizon)


# -- the loop -------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    eval_nll: Optional[float]  # head, per token, best checkpoint
    base_eval_nll: Optional[float]  # the base model on the same windows
    resumed_from: int = 0
    history: list = field(default_factory=list)


def train(
    recipe: TrainRecipe,
    run_dir: Path,
    model=None,
    tokenizer=None,
    resume: bool = False,
    on_event: EventCallback = None,
) -> TrainResult:
    """Train a joint head as `recipe` says; everything lands in `run_dir`."""
    from accelerate import Accelerator

    emit = on_event or (lambda _event: None)
    t, mode = recipe.train, recipe.backbone.mode
    run_dir = Path(run_dir)
    check_head(recipe)
    state = _resume_state(run_dir) if resume else None
    torch.manual_seed(t.seed)
    if model is None:
        from tjdkit.models import load_model

        model, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=recipe.model.device)
    accelerator = Accelerator(mixed_precision=t.mixed_precision, cpu=model.device.type == "cpu")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    train_examples = load_examples(recipe.data, tokenizer, "train")
    eval_examples = load_examples(recipe.data, tokenizer, "eval")
    if recipe.data.self_distill:
        report = lambda done, total: emit({"kind": "distill", "done": done, "total": total})  # noqa: E731
        distill = dict(new_tokens=recipe.data.distill_tokens, max_length=recipe.data.max_length)
        train_examples = self_distill(model, tokenizer, train_examples, t.batch_size, report, **distill)
        # Checkpoints are chosen on held-out NLL: of the same kind of target the head trains on.
        eval_examples = self_distill(model, tokenizer, eval_examples, t.batch_size, **distill)
    vocab_ids = None
    vocab_size = model.get_output_embeddings().weight.shape[0]
    if recipe.head.draft_vocab and recipe.head.draft_vocab < vocab_size:  # else: the whole vocabulary
        vocab_ids = frequent_token_ids(train_examples, recipe.head.draft_vocab, [tokenizer.eos_token_id])
    head = build_run_head(recipe, model, vocab_ids).to(model.device)
    model = prepare_backbone(model, mode, recipe.backbone.lora_rank)
    joint = JointLoss(model, head, recipe.backbone.lm_loss_weight, tokenizer.eos_token_id)
    trainable = [p for p in joint.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    world = accelerator.num_processes
    steps_per_epoch = math.ceil(len(train_examples) / (t.batch_size * world))
    total_steps = t.max_steps or steps_per_epoch * t.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, t.warmup_steps, total_steps))

    step, best = 0, math.inf
    if state is not None:
        _restore(state, joint, optimizer, schedule)
        step, best = state["step"], state["best"]
        emit({"kind": "resume", "step": step})
    joint, optimizer = accelerator.prepare(joint, optimizer)
    inner = accelerator.unwrap_model(joint)

    main = accelerator.is_main_process
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for checkpoint in ("best", "last"):
            remove_stale_temp_dirs(run_dir / checkpoint)  # left by a run killed while saving
        atomic_write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        _truncate_metrics(metrics_path, step)

    features = None
    if mode == "frozen":
        model.eval()
        features = _cache_features(model, train_examples, recipe.head.horizon, t.batch_size, pad_id, tokenizer.eos_token_id, emit)

    info = {"model": recipe.model.name, "backbone_mode": mode, "dataset": recipe.data.dataset}
    history: list[dict] = []
    base_nll = None
    started, tokens_seen, started_step = time.time(), 0, step
    order_epoch, order = -1, []
    while step < total_steps:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, epoch_order(len(train_examples), t.seed, epoch)
        chunk = order[position * t.batch_size * world : (position + 1) * t.batch_size * world]
        batch_index = chunk[accelerator.process_index :: world]
        every = recipe.head.horizon if t.memory_efficient_loss else 1
        offset = loss_offset(t.seed, step, recipe.head.horizon) if t.memory_efficient_loss else 0
        joint.train()
        if mode == "frozen":
            model.eval()
            hidden, targets = _feature_batch(features, batch_index, every, offset)
            loss, tokens = joint(hidden=hidden.to(model.device).float(), targets=targets.to(model.device))
        else:
            ids, mask, _ = collate([train_examples[i] for i in batch_index], pad_id)
            loss, tokens = joint(ids=ids.to(model.device), mask=mask.to(model.device), every=every, offset=offset)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
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
            "loss": loss.item(),
            "lr": schedule.get_last_lr()[0],
            "tokens_per_second": tokens_seen / elapsed if elapsed > 0 else 0.0,
            "eta_seconds": elapsed / (step - started_step) * (total_steps - step),
        }
        evaluating = step % t.eval_every == 0 or step == total_steps
        if evaluating and main:
            inner.eval()
            eval_nll, base_nll = evaluate_nll(inner.model, inner.head, eval_examples, t.batch_size, pad_id)
            record.update(eval_nll=eval_nll, base_eval_nll=base_nll)
            if eval_nll < best:
                best = eval_nll
                save_checkpoint(run_dir / "best", inner.head, inner.model, {**info, "step": step, "eval_nll": eval_nll})
        if main and (step % t.save_every == 0 or step == total_steps):
            trainer_state = {
                "step": step,
                "best": best,
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            save_checkpoint(run_dir / "last", inner.head, inner.model, {**info, "step": step}, trainer_state)
        if main:
            history.append(record)
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        emit({"kind": "step", "total": total_steps, **record})
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, step, best if best < math.inf else None, base_nll, started_step, history)


def _resume_state(run_dir: Path) -> dict:
    path = run_dir / "last" / TRAINER_STATE
    if not path.is_file():
        raise TjdkitError(f"nothing to resume: {run_dir} has no last checkpoint ({path} is missing)")
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise TjdkitError(f"corrupt checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return {**state, "last_dir": path.parent}


def _restore(state: dict, joint: JointLoss, optimizer, schedule) -> None:
    """Put the last checkpoint's head, backbone, optimizer, schedule and RNG back in place."""
    from safetensors.torch import load_file

    from tjdkit.runs import apply_backbone, read_checkpoint

    last = state["last_dir"]
    joint.head.load_state_dict(load_file(last / "head.safetensors"))
    info = read_checkpoint(last)
    if info["backbone_weights"] == "adapter":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(joint.model, load_file(last / "adapter" / "adapter_model.safetensors"))
    else:
        apply_backbone(joint.model, last, info)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])


def _truncate_metrics(path: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: drop them from metrics.jsonl."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _cache_features(model, examples, horizon, batch_size, pad_id, end_id, emit) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per example: hidden states [T_i, D] and targets [T_i, H] for every window (EOS past the end)."""
    cached = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, mask, _ = collate(examples[start : start + batch_size], pad_id)
            ids, mask = ids.to(model.device), mask.to(model.device)
            hidden = last_hidden(model, ids, mask)
            windows = make_windows(ids, mask, horizon, end_id=end_id)
            for row in range(ids.shape[0]):
                pick = windows.batch == row
                cached.append((hidden[row, windows.position[pick]].cpu(), windows.targets[pick].cpu()))
            emit({"kind": "features", "done": min(start + batch_size, len(examples)), "total": len(examples)})
    return cached


def _feature_batch(features, batch_index, every, offset):
    """Concatenate cached windows; row j of an example is position j, so `every` selects by position."""
    parts = [(hidden[offset % every :: every], targets[offset % every :: every]) for hidden, targets in (features[i] for i in batch_index)]
    return torch.cat([hidden for hidden, _ in parts]), torch.cat([targets for _, targets in parts])
