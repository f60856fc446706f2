"""One training loop for joint heads, on accelerate.

frozen backbone: hidden states are computed once per example and kept, so every epoch
after the first costs only the head. last_layer / full: the backbone trains too, with
the base next-token loss beside the head's, so plain decoding keeps working.
The run directory is written as it goes (metrics.jsonl) and checkpoints are atomic.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from tjdkit.config import TrainRecipe
from tjdkit.errors import TjdkitError
from tjdkit.fileio import atomic_directory, atomic_write_text
from tjdkit.recipes import dump_recipe
from tjdkit.windows import base_window_nll, last_hidden, make_windows

EventCallback = Optional[Callable[[dict], None]]


# -- data -----------------------------------------------------------------------------


@dataclass
class Example:
    input_ids: list[int]
    prompt_length: int  # tokens before the answer starts
    target: Optional[float] = None


def load_examples(recipe: TrainRecipe, tokenizer, split: str) -> list[Example]:
    """Tokenised examples of the recipe's dataset (stemp for now), truncated to max_length."""
    data = recipe.data
    if data.dataset != "stemp":
        raise TjdkitError(f"dataset '{data.dataset}' is not available for training yet (use stemp)")
    from tjdkit.data.stemp import stemp_rows

    size = data.train_size if split == "train" else data.eval_size
    examples = []
    for row in stemp_rows(split, size, data.seed):
        prompt_ids = tokenizer(row["prompt"]).input_ids
        answer_ids = tokenizer(row["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids = (prompt_ids + answer_ids)[: data.max_length]
        examples.append(Example(ids, len(prompt_ids), row["target"]))
    return examples


def frequent_token_ids(examples: list[Example], k: int, always: list[int]) -> torch.Tensor:
    """The k most frequent tokens of the training data (ties by id), always including `always`."""
    counts = Counter(token for example in examples for token in example.input_ids)
    ranked = [token for token, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    chosen = list(dict.fromkeys([*always, *ranked]))[:k]
    used = set(chosen)
    filler = (token for token in range(k * 4 + max(chosen, default=0) + 1) if token not in used)
    while len(chosen) < k:  # tiny datasets: pad with unused ids so the subset has k entries
        chosen.append(next(filler))
    return torch.tensor(sorted(chosen), dtype=torch.long)


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T], attention mask [B, T], answer start - 1 [B]."""
    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        mask[row, : len(example.input_ids)] = 1
    first = torch.tensor([max(example.prompt_length - 1, 0) for example in examples])
    return ids, mask, first


# -- the head on its model ------------------------------------------------------------------


def build_run_head(recipe: TrainRecipe, model, vocab_ids: Optional[torch.Tensor]):
    from tjdkit.heads import build_head

    h = recipe.head
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden_size, vocab_size = config.hidden_size, model.get_output_embeddings().weight.shape[0]
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


# -- the loop -------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    eval_nll: Optional[float]  # head, per token, best checkpoint
    base_eval_nll: Optional[float]  # the base model on the same windows
    history: list = field(default_factory=list)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then linear decay to zero at the last step."""
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * max(0.0, 1.0 - step / max(total, 1))


def window_hidden(out, windows) -> torch.Tensor:
    """The final hidden state at each window's position [N, D], from a forward with output_hidden_states."""
    return out.hidden_states[-1][windows.batch, windows.position].float()


def window_loss(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean -log p(window) / H over windows whose targets the head can represent."""
    keep = head.in_vocab(targets).all(dim=1)
    if not keep.any():
        return hidden.sum() * 0.0
    return -head.log_prob(hidden[keep], targets[keep]).mean() / targets.shape[1]


def evaluate_nll(model, head, examples: list[Example], horizon: int, batch_size: int, pad_id: int) -> tuple[float, float]:
    """Per-token NLL of the head and of the base model (chain rule) on the answers' windows."""
    head_total, base_total, count = 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, mask, first = collate(examples[start : start + batch_size], pad_id)
            ids, mask, first = ids.to(model.device), mask.to(model.device), first.to(model.device)
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            windows = make_windows(ids, mask, horizon, first)
            keep = head.in_vocab(windows.targets).all(dim=1)
            hidden = window_hidden(out, windows)
            head_total += -head.log_prob(hidden[keep], windows.targets[keep]).sum().item()
            base_total += base_window_nll(out.logits, windows)[keep].sum().item()
            count += int(keep.sum()) * horizon
    return head_total / max(count, 1), base_total / max(count, 1)


def train(recipe: TrainRecipe, run_dir: Path, model=None, tokenizer=None, on_event: EventCallback = None) -> TrainResult:
    """Train a joint head as `recipe` says; everything lands in `run_dir`."""
    from accelerate import Accelerator

    emit = on_event or (lambda _event: None)
    t = recipe.train
    torch.manual_seed(t.seed)
    if model is None:
        from tjdkit.models import load_model

        model, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=recipe.model.device)
    accelerator = Accelerator(mixed_precision=t.mixed_precision, cpu=model.device.type == "cpu")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    horizon = recipe.head.horizon

    train_examples = load_examples(recipe, tokenizer, "train")
    eval_examples = load_examples(recipe, tokenizer, "eval")
    vocab_ids = None
    if recipe.head.draft_vocab:
        vocab_ids = frequent_token_ids(train_examples, recipe.head.draft_vocab, [tokenizer.eos_token_id])
    head = build_run_head(recipe, model, vocab_ids).to(model.device)

    mode = recipe.backbone.mode
    for parameter in model.parameters():
        parameter.requires_grad_(mode == "full")
    if mode == "last_layer":
        last_block = list(model.base_model.layers if hasattr(model.base_model, "layers") else model.base_model.h)[-1]
        for parameter in last_block.parameters():
            parameter.requires_grad_(True)
    if mode == "lora":
        raise TjdkitError("backbone mode 'lora' is not available yet (use frozen, last_layer or full)")
    trainable = [p for p in head.parameters() if p.requires_grad] + [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = math.ceil(len(train_examples) / t.batch_size)
    total_steps = t.max_steps or steps_per_epoch * t.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, t.warmup_steps, total_steps))
    head, optimizer = accelerator.prepare(head, optimizer)
    raw_head = accelerator.unwrap_model(head)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    metrics_path = run_dir / "metrics.jsonl"

    features = None
    if mode == "frozen":
        model.eval()
        features = _cache_features(model, train_examples, horizon, t.batch_size, pad_id, emit)

    history: list[dict] = []
    best = math.inf
    base_nll = None
    step = 0
    started = time.time()
    tokens_seen = 0
    rng = random.Random(t.seed)
    while step < total_steps:
        order = list(range(len(train_examples)))
        rng.shuffle(order)
        for start in range(0, len(order), t.batch_size):
            if step >= total_steps:
                break
            batch_index = order[start : start + t.batch_size]
            offset = rng.randrange(horizon) if t.memory_efficient_loss else 0
            every = horizon if t.memory_efficient_loss else 1
            head.train()
            if features is not None:
                hidden, targets = _feature_batch(features, batch_index, every, offset)
                loss = window_loss(raw_head, hidden.to(model.device).float(), targets.to(model.device))
            else:
                model.train()
                ids, mask, first = collate([train_examples[i] for i in batch_index], pad_id)
                ids, mask = ids.to(model.device), mask.to(model.device)
                out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), output_hidden_states=True)
                windows = make_windows(ids, mask, horizon, every=every, offset=offset)
                hidden = window_hidden(out, windows)
                loss = window_loss(raw_head, hidden, windows.targets) + recipe.backbone.lm_loss_weight * out.loss
                targets = windows.targets
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if t.grad_clip > 0:
                accelerator.clip_grad_norm_(trainable, t.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            tokens_seen += int(targets.numel())
            record = {"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0], "tokens_per_second": tokens_seen / (time.time() - started)}
            if step % t.eval_every == 0 or step == total_steps:
                model.eval()
                head.eval()
                eval_nll, base_nll = evaluate_nll(model, raw_head, eval_examples, horizon, t.batch_size, pad_id)
                record.update(eval_nll=eval_nll, base_eval_nll=base_nll)
                if eval_nll < best:
                    best = eval_nll
                    _save_head(raw_head, recipe, run_dir / "best", model if mode != "frozen" else None, tokenizer)
            history.append(record)
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            emit({"kind": "step", "total": total_steps, **record})
    _save_head(raw_head, recipe, run_dir / "last", model if mode != "frozen" else None, tokenizer)
    return TrainResult(run_dir, step, best if best < math.inf else None, base_nll, history)


def _cache_features(model, examples, horizon, batch_size, pad_id, emit) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per example: hidden states [T_i, D] and targets [T_i, H] for every full window."""
    cached = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            ids, mask, _ = collate(examples[start : start + batch_size], pad_id)
            ids, mask = ids.to(model.device), mask.to(model.device)
            hidden = last_hidden(model, ids, mask)
            windows = make_windows(ids, mask, horizon)
            for row in range(ids.shape[0]):
                pick = windows.batch == row
                cached.append((hidden[row, windows.position[pick]].cpu(), windows.targets[pick].cpu()))
            emit({"kind": "features", "done": min(start + batch_size, len(examples)), "total": len(examples)})
    return cached


def _feature_batch(features, batch_index, every, offset):
    """Concatenate cached windows; row j of an example is position j, so `every` selects by position."""
    parts = [(hidden[offset % every :: every], targets[offset % every :: every]) for hidden, targets in (features[i] for i in batch_index)]
    return torch.cat([hidden for hidden, _ in parts]), torch.cat([targets for _, targets in parts])


def _save_head(head, recipe: TrainRecipe, directory: Path, trained_backbone, tokenizer) -> None:
    """head.safetensors + config.json, and the backbone (loadable by load_model) when it trained."""
    from safetensors.torch import save_file

    with atomic_directory(directory) as tmp:
        state = {key: value.detach().contiguous().cpu() for key, value in head.state_dict().items()}
        save_file(state, str(tmp / "head.safetensors"))
        if trained_backbone is not None:
            trained_backbone.save_pretrained(tmp / "backbone")
            tokenizer.save_pretrained(tmp / "backbone")
        config = {
            "head": head.config(),
            "model": recipe.model.name,
            "backbone_mode": recipe.backbone.mode,
            "backbone_weights": "backbone" if trained_backbone is not None else "base",
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=_jsonable))


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
