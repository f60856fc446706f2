"""Save a factorised model as a directory that `load_model` (so chat, eval, bench) opens.

A factorised layer has no q_proj.weight, so transformers' `from_pretrained` cannot rebuild
it by itself. The directory is an ordinary Hugging Face one (config.json, safetensors,
tokenizer) whose config carries `tjdkit_factorization`: the method and each layer's ranks.
Loading builds the model from its config, swaps in empty factorised modules of those
ranks, then loads the weights strictly. Materialised (dense) Tucker needs none of this:
it loads like any model, and the metadata is kept only as a record.

A directory with factorised modules also carries their code, `modeling_tjdkit_factorized.py`
(copied verbatim: it is the file tjdkit runs), and a config whose model_type is
"tjdkit_factorized" with an auto_map, so plain transformers loads it with
trust_remote_code=True and refuses it without, rather than building the dense architecture
and silently re-initialising the attention. tjdkit loads it with its own code, never the copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tjdkit.errors import TjdkitError
from tjdkit.factorize.modeling_tjdkit_factorized import AUTO_MAP, METHODS, MODEL_TYPE, write_remote_code

METADATA_KEY = "tjdkit_factorization"


def save_factorized(model, tokenizer, out: str | Path, metadata: dict, force: bool = False, report: dict | None = None) -> Path:
    """Write the model, tokenizer and metadata to `out` atomically (all of it or nothing)."""
    from tjdkit.fileio import atomic_directory, check_output_dir

    out = check_output_dir(out, force)
    setattr(model.config, METADATA_KEY, metadata)
    try:
        with atomic_directory(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if not metadata.get("materialized", False):
                write_remote_code(tmp, code=metadata.get("method") in METHODS)
            if report is not None:
                (tmp / "factorize_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    finally:
        delattr(model.config, METADATA_KEY)
    return out


def owns_code(config: dict) -> bool:
    """config.json is that of a directory `save_factorized` wrote with its modeling file."""
    return config.get("model_type") == MODEL_TYPE and config.get("auto_map") == AUTO_MAP and isinstance(config.get(METADATA_KEY), dict)


def read_metadata(directory: str | Path) -> dict | None:
    """The factorisation record of a model directory, or None for an ordinary model."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    metadata = config.get(METADATA_KEY)
    return metadata if isinstance(metadata, dict) else None


def needs_rebuild(directory: str | Path) -> bool:
    """True when the directory holds factorised modules that from_pretrained cannot build."""
    metadata = read_metadata(directory)
    return bool(metadata) and not metadata.get("materialized", False)


def load_factorized(directory: str | Path, torch_dtype: Any):
    """(model, tokenizer) of a directory written by `save_factorized`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tjdkit.factorize.modeling_tjdkit_factorized import base_config

    directory = Path(directory)
    metadata = read_metadata(directory)
    if not metadata:
        raise TjdkitError(f"{directory} holds no tjdkit factorization")
    # The config is read as data (never through its auto_map): tjdkit runs its own code only.
    config = base_config(json.loads((directory / "config.json").read_text(encoding="utf-8")))
    config.__dict__.pop("auto_map", None)  # a plain save_pretrained of this model must not name code it lacks
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    _install_empty(model, config, metadata, directory)
    state = _read_state_dict(directory)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        problems = (missing and f"missing {', '.join(missing[:3])}") or f"unexpected {', '.join(unexpected[:3])}"
        raise TjdkitError(f"{directory}: the weights do not match the recorded factorization ({problems})")
    if tied:
        model.tie_weights()
    model = model.to(torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory, config=config, trust_remote_code=False)
    return model, tokenizer


def _install_empty(model, config, metadata: dict, directory: Path) -> None:
    from tjdkit.factorize.convert import decoder_layers

    layers = decoder_layers(model)
    method = metadata.get("method")
    for key, entry in (metadata.get("layers") or {}).items():
        index = int(key)
        if not 0 <= index < len(layers):
            raise TjdkitError(f"{directory}: the factorization names layer {index}, the model has {len(layers)}")
        ranks = tuple(int(r) for r in entry["ranks"])
        layer = layers[index]
        if method == "tucker":
            from tjdkit.factorize.tucker import FactorizedAttentionProjections, attention_shape

            attn = layer.self_attn
            shape = attention_shape(attn, config)
            bias = attn.q_proj.bias is not None
            FactorizedAttentionProjections.empty(shape, ranks[0], ranks[1], bias=bias).install(attn)
        elif method == "tpa":
            from tjdkit.factorize.tpa import install_empty

            install_empty(layer, config, ranks)
        elif method == "latent":
            from tjdkit.factorize.latent import install_empty_latent

            install_empty_latent(layer, config, ranks)
        else:
            raise TjdkitError(f"{directory}: unknown factorization method {method!r}")


def _read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = directory / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        raise TjdkitError(f"{directory}: no model.safetensors")
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(directory / shard))
    return state
