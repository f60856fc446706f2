"""Published Hyformer checkpoints (joint_improvement's `model.pt` + `model_config.json`) into tjdkit's layout.

The math is the same; the weights are laid out differently:

- attention: one fused `qkv` [3D, D] (rows q, then k, then v) -> q_proj / k_proj / v_proj;
  `out` -> o_proj;
- RoPE: the published code rotates interleaved pairs (x0, x1), (x2, x3), ... of each head
  (pair i at frequency 10000^(-2i/d)); tjdkit rotates half-split pairs (x_i, x_{i+d/2}) at the
  same frequencies. Permuting each head's q and k rows to [0, 2, 4, ..., 1, 3, 5, ...] makes
  tjdkit's rotation produce the published rotated vector in permuted order, and a dot product
  is unchanged by permuting both sides, so attention scores are identical. v is not rotated;
- SwiGLU: w1 (gate), w3 (up), w2 (down); its hidden size (a multiple of 256) becomes
  `intermediate_size`;
- norms: attn_norm, ffn_norm -> mlp_norm, norm -> model.norm (RMSNorm, `rms_norm_eps` -> eps);
- heads: lm and mlm are tied to the embedding in both.

`model.pt` is read with `torch.load(weights_only=True)`: its unpickler builds tensors and plain
containers only and refuses anything else, so loading it cannot run code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tjdkit.errors import TjdkitError
from tjdkit.models.hyformer.checkpoint import strip_wrapper_prefixes

PUBLISHED_WEIGHTS = "model.pt"
PUBLISHED_CONFIG = "model_config.json"
REQUIRED_FIELDS = ("vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len")
PUBLISHED_ROPE_BASE = 10000.0  # a constant in the published rotary.py

_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_LAYER_PARTS = {  # published name inside a layer -> tjdkit name inside model.layers.N
    "attn_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "mlp_norm.weight",
    "attn.out.weight": "attn.o_proj.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}


def is_published_checkpoint(path: str | Path) -> bool:
    """A directory in the published layout: model.pt beside model_config.json, or either one alone
    (so that a half-copied directory gets a clear error rather than 'unknown model')."""
    path = Path(path).expanduser()
    return path.is_dir() and ((path / PUBLISHED_WEIGHTS).is_file() or (path / PUBLISHED_CONFIG).is_file())


def read_published(directory: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(model_config.json as a dict, the state dict of model.pt), read without running code."""
    directory = Path(directory).expanduser()
    for name in (PUBLISHED_CONFIG, PUBLISHED_WEIGHTS):
        if not (directory / name).is_file():
            raise TjdkitError(f"{directory} is not a published Hyformer checkpoint: no {name}")
    try:
        fields = json.loads((directory / PUBLISHED_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise TjdkitError(f"cannot read {directory / PUBLISHED_CONFIG}: {str(exc).splitlines()[0]}") from None
    if not isinstance(fields, dict):
        raise TjdkitError(f"{directory / PUBLISHED_CONFIG} does not hold a JSON object")
    try:
        state = torch.load(directory / PUBLISHED_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler raises several types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TjdkitError(f"cannot read {directory / PUBLISHED_WEIGHTS} as plain tensors: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]  # the published trainer's checkpoint with include_model=True
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise TjdkitError(f"{directory / PUBLISHED_WEIGHTS} is not a state dict of tensors")
    return fields, strip_wrapper_prefixes(state)


def published_to_tjdkit(fields: dict[str, Any], state: dict[str, Tensor], drop_prediction_head: bool = False,
                        source: str = "checkpoint"):
    """(HyformerConfig, tjdkit state dict) for a published config and state dict.

    Raises TjdkitError naming what tjdkit's Hyformer cannot represent (a LayerNorm final norm,
    MLP or attention biases, untied heads, the published prediction head unless dropped)."""
    from tjdkit.models.hyformer.config import HyformerConfig

    missing = [name for name in REQUIRED_FIELDS if name not in fields]
    if missing:
        raise TjdkitError(f"{source}: {PUBLISHED_CONFIG} lacks {', '.join(missing)}")
    _refuse_unsupported(state, drop_prediction_head, source)
    D, H, L = fields["d_model"], fields["n_heads"], fields["n_layers"]
    expected = {"embed.weight", "norm.weight", "heads.lm.weight", "heads.mlm.weight"}
    expected |= {f"layers.{i}.{part}" for i in range(L) for part in (*_LAYER_PARTS, "attn.qkv.weight")}
    present = {key for key in state if not key.startswith("heads.prediction.")}
    if present != expected:
        extra, lacking = sorted(present - expected), sorted(expected - present)
        problems = [f"unknown weights {_few(extra)}"] if extra else []
        problems += [f"missing weights {_few(lacking)}"] if lacking else []
        raise TjdkitError(f"{source} is not in the published Hyformer layout ({'; '.join(problems)})")
    try:
        config = HyformerConfig(
            vocab_size=fields["vocab_size"], d_model=D, n_heads=H, n_layers=L, max_seq_len=fields["max_seq_len"],
            attn_dropout=float(fields.get("attn_dropout_p", 0.0)), resid_dropout=0.0,
            eps=float(fields.get("rms_norm_eps", 1e-5)),
            intermediate_size=int(state["layers.0.ffn.w1.weight"].shape[0]) if L else None,
            rope_theta=PUBLISHED_ROPE_BASE,
        )
    except (TypeError, ValueError) as exc:
        raise TjdkitError(f"{source}: {exc}") from None
    _check_shapes(state, config, source)

    d = config.head_dim
    order = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # interleaved pairs -> half-split

    def half_split(rows: Tensor) -> Tensor:  # [D, D], rows grouped by head -> the same rows, permuted per head
        return rows.reshape(H, d, -1)[:, order].reshape(D, -1).contiguous()

    embed = state["embed.weight"]
    out = {"model.embed_tokens.weight": embed, "model.norm.weight": state["norm.weight"],
           "lm_head.weight": embed, "mlm_head.weight": embed}
    for key, value in state.items():
        match = _LAYER.fullmatch(key)
        if not match:
            continue
        prefix, part = f"model.layers.{match.group(1)}.", match.group(2)
        if part == "attn.qkv.weight":
            q, k, v = value.split(D, dim=0)  # [D, D] each
            out[prefix + "attn.q_proj.weight"] = half_split(q)
            out[prefix + "attn.k_proj.weight"] = half_split(k)
            out[prefix + "attn.v_proj.weight"] = v.contiguous()
        else:
            out[prefix + _LAYER_PARTS[part]] = value
    return config, out


def load_published(src: str | Path, drop_prediction_head: bool = False):
    """A tjdkit Hyformer (eval mode) holding a published checkpoint's weights."""
    from tjdkit.models.hyformer.model import Hyformer

    fields, state = read_published(src)
    config, converted = published_to_tjdkit(fields, state, drop_prediction_head, source=str(src))
    model = Hyformer(config)
    result = model.load_state_dict(converted, strict=False)
    tied = set(model._tied_weights_keys)
    if result.unexpected_keys or set(result.missing_keys) - tied:  # a bug here, not a user's mistake
        raise RuntimeError(f"conversion produced keys that do not fit: {result}")
    model.tie_weights()
    return model.eval()


def convert_published(src: str | Path, dest: str | Path, drop_prediction_head: bool = False, force: bool = False) -> Path:
    """Write `dest`: a tjdkit Hyformer directory (config.json, model.safetensors) whose lm and mlm
    logits equal the published model's. Atomic: `dest` appears complete or not at all."""
    from tjdkit.fileio import atomic_directory, check_output_dir

    if Path(dest).expanduser().resolve() == Path(src).expanduser().resolve():
        raise TjdkitError(f"DEST must differ from SRC ({src}): conversion writes a new directory")
    dest = check_output_dir(dest, force=force, what="DEST")
    model = load_published(src, drop_prediction_head)
    with atomic_directory(dest) as tmp:
        model.save_pretrained(tmp)
    return dest


def _refuse_unsupported(state: dict[str, Tensor], drop_prediction_head: bool, source: str) -> None:
    pieces = []
    if any(key.startswith("final_norm.") for key in state) or "norm.bias" in state:
        pieces.append("a LayerNorm final norm (tjdkit's is RMSNorm)")
    if any(re.search(r"\.(ffn|mlp)\..*\.bias$", key) for key in state):
        pieces.append("MLP biases")
    if any(re.search(r"\.attn\..*\.bias$", key) for key in state):
        pieces.append("attention biases")
    if any(re.search(r"^(layers|blocks)\.\d+\..*norm\.bias$", key) for key in state):
        pieces.append("LayerNorm block norms")
    if any(key.startswith("heads.prediction.") for key in state) and not drop_prediction_head:
        pieces.append("its prediction head (LayerNorm + classifier; tjdkit's is dense + GELU + out): "
                      "--drop-prediction-head converts the rest")
    embed = state.get("embed.weight")
    for head in ("heads.lm.weight", "heads.mlm.weight"):
        if embed is not None and head in state and state[head].shape == embed.shape and not torch.equal(state[head], embed):
            pieces.append(f"an untied {head.split('.')[1]} head (tjdkit ties lm and mlm to the embedding)")
    if pieces:
        raise TjdkitError(f"{source} cannot be converted: unsupported {'; '.join(pieces)}")


def _check_shapes(state: dict[str, Tensor], config, source: str) -> None:
    D, V, I = config.d_model, config.vocab_size, config.intermediate_size
    want = {"embed.weight": (V, D), "norm.weight": (D,), "heads.lm.weight": (V, D), "heads.mlm.weight": (V, D)}
    for i in range(config.n_layers):
        want |= {f"layers.{i}.attn.qkv.weight": (3 * D, D), f"layers.{i}.attn.out.weight": (D, D),
                 f"layers.{i}.attn_norm.weight": (D,), f"layers.{i}.ffn_norm.weight": (D,),
                 f"layers.{i}.ffn.w1.weight": (I, D), f"layers.{i}.ffn.w3.weight": (I, D), f"layers.{i}.ffn.w2.weight": (D, I)}
    for key, shape in want.items():
        if tuple(state[key].shape) != shape:
            raise TjdkitError(f"{source}: {key} has shape {list(state[key].shape)}, its config needs {list(shape)}")


def _few(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
