"""Joint heads trained on their backbone: the tjdkit.training.loop Job for `tjdkit train`.

frozen: the backbone's hidden states are computed once and kept in memory, so every
epoch after the first costs only the head. last_layer, lora, full: the backbone trains
too, with its own next-token loss beside the head's, so plain decoding keeps working.
Loss offsets are a function of (seed, step), like the loop's data order, so a run
resumed from its last checkpoint continues exactly where the killed one was.
`accelerate launch -m tjdkit train ...` shards each batch over processes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from tjdkit.config import TrainRecipe
from tjdkit.data.distilled import ContinuationStore
from tjdkit.data.examples import Example, collate, frequent_token_ids, load_examples, self_distill
from tjdkit.errors import TjdkitError
from tjdkit.fileio import cache_root
from tjdkit.evaluation.heads import evaluate_nll, window_hidden
from tjdkit.training.loop import EventCallback, epoch_order, lr_factor, read_resume_state, run_loop, tracker_options  # noqa: F401 - epoch_order, lr_factor: re-exported
from tjdkit.recipes import dump_recipe
from tjdkit.training.runs import save_checkpoint
from tjdkit.heads.windows import last_hidden, make_windows, window_loss
from tjdkit.heads.hub import output_size
from tjdkit.models.quantize import refuse_quantized

# -- the head on its model --------------------------------------------------------------


def build_run_head(recipe: TrainRecipe, model, vocab_ids: Optional[torch.Tensor]):
    from tjdkit.heads import build_head

    h = recipe.head
    vocab_size, hidden_size = output_size(model)
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


def check_resumable(recipe: TrainRecipe, last_dir: Path) -> None:
    """--resume continues the same head on the same model: a recipe that asks for another is refused up front."""
    from tjdkit.training.runs import read_checkpoint

    info, h = read_checkpoint(last_dir), recipe.head
    saved = info["head"]
    wanted = {"model": recipe.model.name, "head": h.name, "rank": h.rank, "horizon": h.horizon, "backbone": recipe.backbone.mode}
    found = {"model": info["model"], "head": saved.get("name"), "rank": saved.get("rank"), "horizon": saved.get("horizon"),
             "backbone": info.get("backbone_mode")}
    if h.name in ("stp", "multihead"):  # rank is not part of these heads
        wanted.pop("rank"), found.pop("rank")
    differ = [key for key in wanted if wanted[key] != found[key]]
    if differ:
        what = ", ".join(f"{key} {found[key]} (asked: {wanted[key]})" for key in differ)
        raise TjdkitError(f"cannot resume {last_dir.parent}: it trains {what}; drop the changed settings or choose another --out")


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


def loss_offset(seed: int, step: int, horizon: int) -> int:
    return random.Random(seed * 7_919 + step).randrange(horizon)


def distill_model(model, weights: str):
    """The model that writes the distilled text: `model` itself, or a float16-weights copy of it
    (fp16-weights, on the CPU; the backbone stays float32 for the features the head trains on)."""
    if weights == "same":
        return model
    if model.device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        return model  # the fast CPU format applies to float32 on the CPU only; elsewhere the model is fast already
    from tjdkit.models.quantize import weights_copy

    return weights_copy(model, weights)


# -- training --------------------------------------------------------------------------------


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
    state = read_resume_state(run_dir) if resume else None
    if state is not None:
        check_resumable(recipe, state["last_dir"])
    torch.manual_seed(t.seed)
    if model is None:
        from tjdkit.models import load_model

        model, tokenizer = load_model(recipe.model.name, dtype=recipe.model.dtype, device=recipe.model.device)
    refuse_quantized(model, "training a head")
    accelerator = Accelerator(mixed_precision=t.mixed_precision, cpu=model.device.type == "cpu", **tracker_options(t, run_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    train_examples = load_examples(recipe.data, tokenizer, "train")
    eval_examples = load_examples(recipe.data, tokenizer, "eval")
    if not any(len(example.input_ids) > example.prompt_length for example in train_examples):
        raise TjdkitError(
            f"data.max_length {recipe.data.max_length} ends every training example inside its prompt: "
            "no answer tokens to train on (raise data.max_length)"
        )
    if recipe.data.self_distill:
        report = lambda done, total: emit({"kind": "distill", "done": done, "total": total})  # noqa: E731
        distill = dict(new_tokens=recipe.data.distill_tokens, max_length=recipe.data.max_length)
        writer = distill_model(model, recipe.data.distill_weights)
        batch = recipe.data.distill_batch_size or t.batch_size
        # kept on disk per writer: a later run with more prompts generates only the new ones
        store = ContinuationStore.for_writer(cache_root() / "distilled", writer, tokenizer.eos_token_id)
        train_examples = self_distill(writer, tokenizer, train_examples, batch, report, store=store, **distill)
        # Checkpoints are chosen on held-out NLL: of the same kind of target the head trains on.
        eval_examples = self_distill(writer, tokenizer, eval_examples, batch, store=store, **distill)
        del writer
    vocab_ids = None
    vocab_size, _ = output_size(model)
    if recipe.head.draft_vocab and recipe.head.draft_vocab < vocab_size:  # else: the whole vocabulary
        vocab_ids = frequent_token_ids(train_examples, recipe.head.draft_vocab, [tokenizer.eos_token_id])
    head = build_run_head(recipe, model, vocab_ids).to(model.device)
    model = prepare_backbone(model, mode, recipe.backbone.lora_rank)
    joint = JointLoss(model, head, recipe.backbone.lm_loss_weight, tokenizer.eos_token_id)
    job = HeadJob(recipe, joint, train_examples, eval_examples, pad_id, emit)
    done = run_loop(job, t, run_dir, dump_recipe(recipe), accelerator=accelerator, resume_state=state, on_event=on_event,
                    before_first_step=job.cache_features)
    return TrainResult(run_dir, done.steps, done.best, done.last_eval.get("base_eval_nll"), done.resumed_from, done.history)


class HeadJob:
    """A joint head on its backbone, as a loop.Job: checkpoints are runs.py's run checkpoints."""

    score_key = "eval_nll"

    def __init__(self, recipe: TrainRecipe, joint: JointLoss, train_examples: list[Example], eval_examples: list[Example], pad_id: int, emit):
        self.recipe, self.module, self.pad_id, self.emit = recipe, joint, pad_id, emit
        self.train_examples, self.eval_examples = train_examples, eval_examples
        self.size = len(train_examples)
        self.frozen = recipe.backbone.mode == "frozen"
        from tjdkit.heads.hub import model_revision

        self.info = {"model": recipe.model.name, "model_revision": model_revision(joint.model),
                     "backbone_mode": recipe.backbone.mode, "dataset": recipe.data.dataset}
        self.features = None
        self.base_eval_nll = None  # the latest evaluation's, for the model card of the best checkpoint

    def cache_features(self) -> None:
        """frozen: the backbone's windows, once (the loop's before_first_step: the model is on its device, the clock not started)."""
        if self.frozen:
            model, h = self.module.model, self.recipe.head
            model.eval()
            self.features = _cache_features(model, self.train_examples, h.horizon, self.recipe.train.batch_size, self.pad_id, self.module.end_id, self.emit)

    def train_mode(self, module) -> None:
        module.train()
        if self.frozen:
            self.module.model.eval()

    def loss(self, module, step: int, batch_index: list[int]):
        t, horizon, device = self.recipe.train, self.recipe.head.horizon, self.module.model.device
        every = horizon if t.memory_efficient_loss else 1
        offset = loss_offset(t.seed, step, horizon) if t.memory_efficient_loss else 0
        if self.frozen:
            hidden, targets = _feature_batch(self.features, batch_index, every, offset)
            loss, tokens = module(hidden=hidden.to(device).float(), targets=targets.to(device))
        else:
            ids, mask, _ = collate([self.train_examples[i] for i in batch_index], self.pad_id)
            loss, tokens = module(ids=ids.to(device), mask=mask.to(device), every=every, offset=offset)
        return loss, tokens, {}

    def evaluate(self, module) -> dict[str, float]:
        eval_nll, base_nll = evaluate_nll(module.model, module.head, self.eval_examples, self.recipe.train.batch_size, self.pad_id)
        self.base_eval_nll = base_nll
        return {"eval_nll": eval_nll, "base_eval_nll": base_nll}

    def save(self, directory: Path, module, info: dict, trainer_state: Optional[dict]) -> None:
        """A run checkpoint that is a shareable head directory too, with its recipe and held-out NLL in the card."""
        data = self.recipe.data
        training = {"description": self.recipe.description or None, "recipe": dump_recipe(self.recipe),
                    "dataset": f"{data.dataset}" + (" (self-distilled: the base model's own continuations)" if data.self_distill else "")}
        metrics = {"base_eval_nll": self.base_eval_nll} if "eval_nll" in info else {}  # best/ is saved right after evaluate
        save_checkpoint(directory, module.head, module.model, info, trainer_state, card={"training": training, "metrics": metrics})

    def restore(self, directory: Path, module) -> None:
        """The checkpoint's head and trained backbone weights (adapter or backbone.safetensors)."""
        from safetensors.torch import load_file

        from tjdkit.training.runs import apply_backbone, read_checkpoint

        try:
            module.head.load_state_dict(load_file(directory / "head.safetensors"))
        except (OSError, RuntimeError, ValueError) as exc:
            raise TjdkitError(f"cannot resume from {directory}: its head does not fit ({str(exc).strip().splitlines()[0][:160]})") from None
        info = read_checkpoint(directory)
        if info["backbone_weights"] == "adapter":
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(module.model, load_file(directory / "adapter" / "adapter_model.safetensors"))
        else:
            apply_backbone(module.model, directory, info)


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
