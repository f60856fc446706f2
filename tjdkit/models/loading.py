"""`load_model(name_or_path) -> (model, tokenizer)`, whatever the name refers to."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from tjdkit.errors import TjdkitError
from tjdkit.fileio import hub_reachable
from tjdkit.models.cache import ensure_converted
from tjdkit.models.registry import ResolvedModel, resolve_model

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DirectoryFormat:
    """A kind of model directory that transformers' from_pretrained cannot build by itself (such as
    factorised attention): `claims(directory)` tells one apart, `load(directory, torch_dtype)` builds it."""

    name: str
    claims: Callable[[str], bool]
    load: Callable[[str, Any], tuple]
    # tjdkit's own formats save their modeling code for plain transformers (trust_remote_code).
    # `owns_code(config)`: this config.json is that format's, model_type and exact auto_map; it then
    # passes the custom-code check, because `load` builds it with tjdkit's installed classes and
    # never imports the directory's copy.
    owns_code: Optional[Callable[[dict], bool]] = None


# Filled by the packages that write such directories (tjdkit/__init__ wires in factorize's), so
# the model loader never imports the code that produces them.
DIRECTORY_FORMATS: list[DirectoryFormat] = []


def register_directory_format(directory_format: DirectoryFormat) -> None:
    if all(known.name != directory_format.name for known in DIRECTORY_FORMATS):
        DIRECTORY_FORMATS.append(directory_format)


def resolve_device(device: str = "auto") -> "Any":
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: no weights or not supported
        raise TjdkitError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TjdkitError(f"device '{device}' requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: Any = "auto", device: Any = None) -> "Any":
    """float32 on CPU (fast matmuls, exact); bfloat16 on GPUs that support it."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and torch.device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    name = aliases.get(str(dtype), str(dtype))
    if name not in DTYPES:
        raise TjdkitError(f"unknown dtype '{dtype}' (use auto, {', '.join(DTYPES)}, or fp16-weights to decode on the CPU)")
    return getattr(torch, name)


def load_model(
    name_or_path: str,
    dtype: Any = "auto",
    device: Any = "auto",
    seed: int = 0,
    on_stage: Optional[Callable[[str], None]] = None,
):
    """Load any model tjdkit knows, in eval mode, on `device`, with its tokenizer.

    `seed` only matters for the tiny random presets. `on_stage` receives short status
    texts during slow work (the one-time GGUF conversion).
    """
    import torch

    from tjdkit.models.quantize import WEIGHT_FORMATS, quantize_weights

    resolved = resolve_model(name_or_path)
    torch_device = resolve_device(device) if isinstance(device, str) else device
    quantized = isinstance(dtype, str) and dtype in WEIGHT_FORMATS  # loaded in float32, then quantised
    if quantized and torch.device(torch_device).type != "cpu":
        raise TjdkitError(f"{dtype} is a CPU path: on a GPU use --dtype bfloat16")
    torch_dtype = torch.float32 if quantized else resolve_dtype(dtype, torch_device)
    if resolved.kind == "tiny":
        from tjdkit.models.tiny import build_tiny

        model, tokenizer = build_tiny(resolved.target, seed=seed)
        model = model.to(dtype=torch_dtype)
    elif resolved.kind == "gguf":
        directory = ensure_converted(resolved.gguf, on_stage=on_stage)
        if on_stage:
            on_stage("loading the converted model from the cache")
        model, tokenizer = _from_pretrained(str(directory), torch_dtype)
    elif resolved.kind == "directory":
        from safetensors import SafetensorError

        check_model_directory(resolved.target)
        try:
            special = next((known for known in _directory_formats() if known.claims(resolved.target)), None)
            if special is not None:  # e.g. factorised attention: modules from_pretrained cannot build
                model, tokenizer = special.load(resolved.target, torch_dtype)
            else:
                model, tokenizer = _from_pretrained(resolved.target, torch_dtype)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            if isinstance(exc, TjdkitError):
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TjdkitError(f"cannot load the model in {resolved.requested}: {reason[:300]}") from None
    else:
        model, tokenizer = _from_hub(resolved, torch_dtype)
    model = model.to(torch_device)
    model.eval()
    if quantized:
        quantize_weights(model)
    return model, tokenizer


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_directory(directory: str | os.PathLike) -> dict:
    """Refuse, before transformers sees it, a directory that could run code when loaded (custom
    modelling code through auto_map, pickled weights) or that holds no readable config; returns the config."""
    import json
    from pathlib import Path

    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TjdkitError(f"{directory}: unreadable config.json ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(config, dict):
        raise TjdkitError(f"{directory}: config.json must hold a JSON object")
    tokenizer_config = {}
    if (directory / "tokenizer_config.json").is_file():
        try:
            tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TjdkitError(f"{directory}: unreadable tokenizer_config.json ({str(exc).splitlines()[0][:120]})") from None
    own_code = bool(config.get("auto_map")) and any(known.owns_code is not None and known.owns_code(config) for known in _directory_formats())
    if (config.get("auto_map") and not own_code) or (isinstance(tokenizer_config, dict) and tokenizer_config.get("auto_map")):
        raise TjdkitError(
            f"{directory} needs custom model code (an auto_map in its config), which tjdkit does not run: "
            "loading it would execute Python code shipped with the model"
        )
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(path.name for pattern in PICKLED_WEIGHTS for path in directory.glob(pattern))
        if pickled:
            raise TjdkitError(
                f"{directory} holds pickled weights only ({pickled[0]}), which can run code when loaded: "
                "convert them to safetensors first"
            )
        raise TjdkitError(f"{directory} holds no model weights (no *.safetensors file)")
    return config


def _directory_formats() -> list[DirectoryFormat]:
    return [*DIRECTORY_FORMATS, HYFORMER_FORMAT]


def _load_hyformer(directory: str, torch_dtype) -> tuple:
    """tjdkit's installed Hyformer class, whatever code the directory carries (it is never imported)."""
    from transformers import AutoTokenizer

    from tjdkit.models.hyformer import Hyformer

    model = Hyformer.from_pretrained(directory, dtype=torch_dtype, trust_remote_code=False)
    return model, AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def _is_hyformer(directory: str) -> bool:
    import json
    from pathlib import Path

    try:
        return json.loads((Path(directory) / "config.json").read_text(encoding="utf-8")).get("model_type") == "hyformer"
    except (OSError, ValueError, AttributeError):
        return False


def _hyformer_owns_code(config: dict) -> bool:
    """config.json of a Hyformer saved by tjdkit with modeling_hyformer.py beside it."""
    if config.get("model_type") != "hyformer":
        return False
    from tjdkit.models.hyformer.modeling_hyformer import AUTO_MAP

    return config.get("auto_map") == AUTO_MAP


HYFORMER_FORMAT = DirectoryFormat("hyformer", _is_hyformer, _load_hyformer, _hyformer_owns_code)


def _from_pretrained(source: str, torch_dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tjdkit.models.hyformer  # noqa: F401  (registers the "hyformer" model type with the Auto classes)

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
    return model, tokenizer


def _from_hub(resolved: ResolvedModel, torch_dtype):
    try:
        return _from_pretrained(resolved.target, torch_dtype, local_files_only=True)
    except (OSError, ValueError):
        pass
    if not hub_reachable():
        raise TjdkitError(
            f"unknown model '{resolved.requested}': not a tjdkit name (see `tjdkit models ls`), a local path, "
            "or a Hugging Face id in the local cache, and the hub is unreachable (offline)"
        )
    try:
        return _from_pretrained(resolved.target, torch_dtype)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TjdkitError(f"cannot load '{resolved.requested}' from the Hugging Face hub: {first_line}") from None
