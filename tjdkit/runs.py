"""The run directory: what training writes and what eval, chat and bench read back.

    RUN/recipe.yaml        the resolved recipe
    RUN/metrics.jsonl      one line per step
    RUN/best/, RUN/last/   checkpoints, each written atomically:
        checkpoint.json    head config, base model, backbone mode, which backbone weights to use
        head.safetensors
        backbone.safetensors   the backbone weights that trained (last_layer, full)
        adapter/               LoRA adapter (lora)
        trainer_state.pt       optimizer, schedule, step (last/ only: what --resume needs)

Verified decoding must run the head on the backbone it was trained with, so a checkpoint
names its backbone weights: "base" (frozen) or the trained weights stored beside the head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from tjdkit.errors import TjdkitError
from tjdkit.fileio import atomic_directory

CHECKPOINT = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"


def is_run(path: str | Path) -> bool:
    path = Path(path)
    return any((path / which / CHECKPOINT).is_file() for which in ("best", "last"))


def save_checkpoint(
    directory: Path,
    head,
    model,
    info: dict[str, Any],
    trainer_state: Optional[dict] = None,
) -> None:
    """Write one checkpoint directory atomically; `info` lands in checkpoint.json."""
    from safetensors.torch import save_file

    mode = info["backbone_mode"]
    with atomic_directory(directory) as tmp:
        save_file(_cpu_state(head.state_dict()), str(tmp / "head.safetensors"))
        if mode == "lora":
            model.save_pretrained(tmp / "adapter")
        elif mode in ("last_layer", "full"):
            trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
            save_file(_cpu_state(trained), str(tmp / "backbone.safetensors"))
        weights = {"frozen": "base", "lora": "adapter"}.get(mode, "backbone.safetensors")
        payload = {**info, "head": head.config(), "backbone_weights": weights}
        (tmp / CHECKPOINT).write_text(json.dumps(payload, indent=2))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)


def _cpu_state(state: dict) -> dict:
    return {key: value.detach().contiguous().cpu() for key, value in state.items()}


def read_checkpoint(directory: Path) -> dict:
    """A joint-head checkpoint's metadata (a Hyformer run's checkpoints are models, not heads)."""
    try:
        info = json.loads((directory / CHECKPOINT).read_text())
    except FileNotFoundError:
        raise TjdkitError(f"{directory} is not a checkpoint (no {CHECKPOINT})") from None
    except (OSError, ValueError) as exc:
        raise TjdkitError(f"corrupt checkpoint {directory / CHECKPOINT}: {exc}") from None
    if info.get("kind") == "hyformer":
        raise TjdkitError(f"{directory.parent} is a Hyformer run, not a joint head: use {directory} as a model (--model)")
    return info


def load_head(directory: Path, device: Any = "cpu"):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tjdkit.heads import build_head

    info = read_checkpoint(directory)
    head = build_head(**info["head"])
    try:
        head.load_state_dict(load_file(directory / "head.safetensors"))
    except (FileNotFoundError, SafetensorError, RuntimeError, OSError) as exc:
        raise TjdkitError(f"corrupt or missing head weights in {directory}: {str(exc).splitlines()[0]}") from None
    return head.to(device).eval()


def apply_backbone(model, directory: Path, info: dict):
    """Put the checkpoint's trained backbone weights (if any) into a freshly loaded base model."""
    weights = info.get("backbone_weights", "base")
    if weights == "base":
        return model
    if weights == "adapter":
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(directory / "adapter")).merge_and_unload()
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(directory / weights)
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise TjdkitError(f"corrupt or missing backbone weights in {directory}: {str(exc).splitlines()[0]}") from None
    missing_or_unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if missing_or_unexpected:
        raise TjdkitError(f"{directory / weights} does not fit {info['model']}: {missing_or_unexpected[0]} ...")
    return model


def checkpoint_dir(run_dir: str | Path, which: str = "best") -> Path:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise TjdkitError(f"run directory not found: {run_dir}")
    for candidate in (which, "last", "best"):
        if (run_dir / candidate / CHECKPOINT).is_file():
            return run_dir / candidate
    raise TjdkitError(f"{run_dir} holds no checkpoint (expected {run_dir}/best or {run_dir}/last)")


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    head: Any
    info: dict
    directory: Path


def load_run(run_dir: str | Path, which: str = "best", dtype: str = "auto", device: str = "auto") -> LoadedRun:
    """The base model with the run's backbone weights, its tokenizer, and the trained head."""
    from tjdkit.models import load_model

    directory = checkpoint_dir(run_dir, which)
    info = read_checkpoint(directory)
    model, tokenizer = load_model(info["model"], dtype=dtype, device=device)
    model = apply_backbone(model, directory, info).eval()
    head = load_head(directory, model.device)
    return LoadedRun(model, tokenizer, head, info, directory)
