"""The weight formats bench times side by side: float32 and the fast format of the device, so a
speed-up from fp16-weights or bfloat16 is read next to float32 in one run, never instead of it."""

from __future__ import annotations

from typing import Optional

from tjdkit.errors import TjdkitError

FORMATS = ("float32", "bfloat16", "float16", "fp16-weights")  # torch dtypes (and their aliases), or tjdkit's CPU format


def parse_dtypes(text: Optional[str]) -> tuple[str, ...]:
    """--dtype "float32,fp16-weights" -> ("float32", "fp16-weights"); None -> those two on a CPU, the GPU's auto dtype on a GPU."""
    from tjdkit.models import resolve_device, resolve_dtype
    from tjdkit.models.quantize import WEIGHT_FORMATS

    device = resolve_device("auto")
    if text is None:
        return ("float32", "fp16-weights") if device.type == "cpu" else (_name(resolve_dtype("auto", device)),)
    names: list[str] = []
    for part in filter(str.strip, text.split(",")):
        name = part.strip().lower()
        if name not in WEIGHT_FORMATS:
            try:
                name = _name(resolve_dtype(name, device))  # auto, fp32, bf16, ... as everywhere else
            except TjdkitError:
                raise TjdkitError(f"unknown --dtype {part.strip()!r} (use {', '.join(FORMATS)}, comma-separated)") from None
        elif device.type != "cpu":
            raise TjdkitError(f"{name} is a CPU path: on a GPU use --dtype bfloat16")
        if name not in names:
            names.append(name)
    if not names:
        raise TjdkitError("--dtype names no weight format")
    return tuple(names)


def load_dtype(dtypes: tuple[str, ...]) -> str:
    """The format to load: the only one asked for, else float32 (the others are copied from it)."""
    return dtypes[0] if len(dtypes) == 1 else "float32"


def weight_variants(model, dtypes: tuple[str, ...]):
    """The loaded model -> (the first format's model, {other format: a copy in it})."""
    from tjdkit.models.quantize import weight_format, weights_copy

    if len(dtypes) == 1:
        return model, {}
    copies = {dtype: (model if dtype == weight_format(model) else weights_copy(model, dtype)) for dtype in dtypes}
    first = copies.pop(dtypes[0])
    return first, copies


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")
