"""The run directory: what training writes and what eval, chat and bench read back.

    RUN/recipe.yaml        the resolved recipe
    RUN/metrics.jsonl      one line per step
    RUN/best/, RUN/last/   checkpoints, each written atomically:
        checkpoint.json    head config, base model, backbone mode, which backbone weights to use
        head.safetensors + config.json + README.md
                           a head directory (tjdkit.heads.hub): JointHead.from_pretrained(RUN/best) loads it,
                           and the directory can be pushed to the hub as it is
        backbone.safetensors   the backbone weights that trained (last_layer, full)
        adapter/               LoRA adapter (lora)
        trainer_state.safetensors + trainer_state.json
                               optimizer, schedule, step, RNG (last/ only: what --resume needs);
                               no pickle, so a planted file cannot run code

Verified decoding must run the head on the backbone it was trained with, so a checkpoint
names its backbone weights: "base" (frozen) or the trained weights stored beside the head.
Where a run is expected (load_run, chat --head, bench --head-dir), a checkpoint directory, a
head directory written by save_pretrained, or a hub id of one does as well (backbone "base").
Checkpoints written before head directories (no config.json) still load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tjdkit.errors import TjdkitError
from tjdkit.fileio import atomic_directory, save_state_tree

CHECKPOINT = "checkpoint.json"
TRAINER_STATE = "trainer_state"  # .safetensors (tensors) + .json (the rest)
LEGACY_TRAINER_STATE = "trainer_state.pt"  # a pickle, written before 0.2: never loaded


def has_trainer_state(checkpoint: str | Path) -> bool:
    return all((Path(checkpoint) / f"{TRAINER_STATE}{suffix}").is_file() for suffix in (".safetensors", ".json"))


def is_run(path: str | Path) -> bool:
    path = Path(path)
    return any((path / which / CHECKPOINT).is_file() for which in ("best", "last"))


def save_checkpoint(
    directory: Path,
    head,
    model,
    info: dict[str, Any],
    trainer_state: Optional[dict] = None,
    card: Optional[dict] = None,
) -> None:
    """Write one checkpoint directory atomically; `info` lands in checkpoint.json.

    It is a head directory too (head.safetensors, config.json, README.md); `card` adds metrics
    and training facts ({"metrics": {...}, "training": {...}}) to its config and model card."""
    from safetensors.torch import save_file

    from tjdkit.heads import hub

    mode = info["backbone_mode"]
    card = card or {}
    training = {"dataset": info.get("dataset"), "backbone_mode": mode, "step": info.get("step"), **card.get("training", {})}
    metrics = {"eval_nll": info.get("eval_nll"), **card.get("metrics", {})}
    config = hub.head_metadata(head, base_model=info["model"], base_model_revision=info.get("model_revision"),
                               metrics=metrics, training=training)
    with atomic_directory(directory) as tmp:
        hub.write_head_files(tmp, head, config, where=str(directory))
        if mode == "lora":
            model.save_pretrained(tmp / "adapter")
        elif mode in ("last_layer", "full"):
            trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
            save_file(_cpu_state(trained), str(tmp / "backbone.safetensors"))
        weights = {"frozen": "base", "lora": "adapter"}.get(mode, "backbone.safetensors")
        payload = {**info, "head": head.config(), "backbone_weights": weights}
        (tmp / CHECKPOINT).write_text(json.dumps(payload, indent=2))
        if trainer_state is not None:
            save_state_tree(tmp, TRAINER_STATE, trainer_state)


def _cpu_state(state: dict) -> dict:
    return {key: value.detach().contiguous().cpu() for key, value in state.items()}


def read_checkpoint(directory: Path) -> dict:
    """A joint-head checkpoint's metadata (a Hyformer run's checkpoints are models, not heads);
    a head directory without checkpoint.json reads as a checkpoint on its base model's own weights."""
    from tjdkit.heads import hub

    if not (directory / CHECKPOINT).exists() and hub.is_head_dir(directory):
        config = hub.read_config(directory)
        if not isinstance(config.get("base_model"), str):
            raise TjdkitError(f"{directory} names no base model (config.json base_model is null): "
                              "load it with JointHead.from_pretrained and attach it to a model yourself")
        return {"model": config["base_model"], "head": hub.head_config(config), "backbone_weights": "base",
                "backbone_mode": "frozen", "head_dir": True}
    try:
        info = json.loads((directory / CHECKPOINT).read_text())
    except FileNotFoundError:
        raise TjdkitError(f"{directory} is not a checkpoint (no {CHECKPOINT})") from None
    except (OSError, ValueError) as exc:
        raise TjdkitError(f"corrupt checkpoint {directory / CHECKPOINT}: {str(exc).splitlines()[0]}") from None
    if not isinstance(info, dict):
        raise TjdkitError(f"corrupt checkpoint {directory / CHECKPOINT}: not a JSON object")
    if info.get("kind") == "hyformer":
        raise TjdkitError(f"{directory.parent} is a Hyformer run, not a joint head: use {directory} as a model (--model)")
    head = info.get("head")
    if not isinstance(info.get("model"), str) or not isinstance(head, dict) or not isinstance(head.get("name"), str):
        missing = "model" if not isinstance(info.get("model"), str) else "head"
        raise TjdkitError(f"corrupt checkpoint {directory / CHECKPOINT}: no valid '{missing}' entry")
    if not isinstance(info.get("backbone_weights", "base"), str):
        raise TjdkitError(f"corrupt checkpoint {directory / CHECKPOINT}: no valid 'backbone_weights' entry")
    return info


def load_head(directory: Path, device: Any = "cpu"):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tjdkit.heads import build_head

    info = read_checkpoint(directory)
    try:
        head = build_head(**info["head"])
    except TypeError as exc:
        raise TjdkitError(f"corrupt checkpoint {directory / CHECKPOINT}: bad head entry ({exc})") from None
    try:
        head.load_state_dict(load_file(directory / "head.safetensors"))
    except (FileNotFoundError, SafetensorError, RuntimeError, OSError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = " ".join(lines[:2])[:240] if lines else type(exc).__name__
        raise TjdkitError(f"corrupt or missing head weights in {directory}: {reason}") from None
    head.hub_info = {"base_model": info["model"], "base_model_revision": info.get("model_revision")}
    return head.to(device).eval()


def apply_backbone(model, directory: Path, info: dict):
    """Put the checkpoint's trained backbone weights (if any) into a freshly loaded base model."""
    weights = info.get("backbone_weights", "base")
    if weights == "base":
        return model
    if weights not in ("adapter", "backbone.safetensors"):
        raise TjdkitError(f"corrupt checkpoint {directory / CHECKPOINT}: unknown backbone_weights {weights!r}")
    if weights == "adapter":
        from peft import PeftModel

        if not (directory / "adapter" / "adapter_model.safetensors").is_file():  # peft would unpickle a .bin
            raise TjdkitError(f"corrupt or missing LoRA adapter in {directory}: no adapter/adapter_model.safetensors")
        try:
            return PeftModel.from_pretrained(model, str(directory / "adapter")).merge_and_unload()
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise TjdkitError(f"corrupt LoRA adapter in {directory}: {str(exc).strip().splitlines()[0][:200]}") from None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(directory / weights)
    except (FileNotFoundError, SafetensorError, OSError) as exc:
        raise TjdkitError(f"corrupt or missing backbone weights in {directory}: {str(exc).splitlines()[0]}") from None
    try:
        missing_or_unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    except RuntimeError as exc:  # shapes differ: the checkpoint names another model than it was trained on
        reason = str(exc).strip().splitlines()[-1].strip()
        raise TjdkitError(f"{directory / weights} does not fit {info['model']}: {reason[:200]}") from None
    if missing_or_unexpected:
        raise TjdkitError(f"{directory / weights} does not fit {info['model']}: {missing_or_unexpected[0]} ...")
    return model


def checkpoint_dir(run_dir: str | Path, which: str = "best") -> Path:
    """A run's `which` checkpoint (else the other one); a checkpoint or head directory itself; or a
    hub id of a head directory, downloaded (safetensors and JSON only)."""
    from tjdkit.heads import hub

    text = str(run_dir)
    run_dir = Path(run_dir).expanduser()
    if not run_dir.exists():
        if hub.looks_like_hub_id(text):
            return hub.resolve(text)
        raise TjdkitError(f"run directory not found: {run_dir}")
    if run_dir.is_file() and run_dir.suffix.lower() in hub.PICKLE_SUFFIXES:
        hub.resolve(run_dir)  # refuses pickles with one line
    for candidate in (which, "last", "best"):
        if (run_dir / candidate / CHECKPOINT).is_file():
            return run_dir / candidate
    if (run_dir / CHECKPOINT).is_file() or hub.is_head_dir(run_dir):
        return run_dir
    raise TjdkitError(f"{run_dir} holds no checkpoint (expected {run_dir}/best, {run_dir}/last or a head directory)")


@dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    head: Any
    info: dict
    directory: Path


def load_run(run_dir: str | Path, which: str = "best", dtype: str = "auto", device: str = "auto",
             model_name: Optional[str] = None) -> LoadedRun:
    """The base model with the run's backbone weights, its tokenizer, and the trained head.

    `run_dir` may also be a checkpoint or head directory, or a hub id of one; `model_name` loads
    another model than the one the head names (a head that does not fit it is one clear line)."""
    from tjdkit.models import load_model
    from tjdkit.models.quantize import WEIGHT_FORMATS, quantize_weights

    directory = checkpoint_dir(run_dir, which)
    info = read_checkpoint(directory)
    quantized = dtype in WEIGHT_FORMATS  # the run's backbone weights go in first, then the weights are quantised
    if model_name:
        info = {**info, "model": model_name}
    model, tokenizer = load_model(info["model"], dtype="float32" if quantized else dtype, device=device)
    model = apply_backbone(model, directory, info).eval()
    if quantized:
        quantize_weights(model)
    head = load_head(directory, model.device)
    from tjdkit.heads.hub import check_fits

    check_fits(head, model, info["model"])
    return LoadedRun(model, tokenizer, head, info, directory)


def is_hyformer(target: str) -> bool:
    """A Hyformer run directory, a saved Hyformer or the tiny-hyformer preset."""
    if target == "tiny-hyformer":
        return True
    path = Path(target).expanduser()
    if is_run(path):
        return _json_field(checkpoint_dir(path) / CHECKPOINT, "kind") == "hyformer"
    return _json_field(path / "config.json", "model_type") == "hyformer"


def _json_field(path: Path, key: str):
    """One field of a JSON file, or None when the file is missing or not JSON (the caller's loader reports that)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def hyformer_model_path(target: str) -> str:
    """What load_model takes: a run's best (else last) checkpoint directory, or the target itself."""
    return str(checkpoint_dir(target)) if is_run(target) else target
