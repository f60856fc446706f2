"""The texts a factorisation is judged and fitted on, and perplexity on them.

    ids = heldout_ids(tokenizer, tokens=1024)                 # fixed: ShareGPT's held-out split
    ids = calibration_ids("sharegpt", tokenizer, tokens=512)  # or a dataset name, a .txt file, literal text
    perplexity(model, ids)

Both come from data that ships with tjdkit's dependencies, so the report is reproducible
offline; the held-out text is never used for fitting (calibration reads the train split).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from tjdkit.errors import TjdkitError

MIN_CALIBRATION_TOKENS = 16
HELDOUT_DATASET = "sharegpt"
_LOGIT_CHUNK = 256  # rows of [n, vocab] logits at a time: 262k-word vocabularies make the full matrix ~1 GB


def _rows_text(dataset: str, split: str, tokens: int) -> str:
    """Rows of `split` joined until the text surely holds `tokens` tokens (~4 characters each).

    The ladder reaches the whole split, so healing on a GPU can take millions of tokens (ShareGPT's
    train split: 11k conversations, 65M characters); small requests still read a few rows.
    """
    from tjdkit.data.sources import dataset_rows

    texts = []
    for size in (8, 64, 512, 4096, None):
        texts = [row["text"] for row in dataset_rows(dataset, split, size=size, seed=0)]
        chars = sum(len(text) for text in texts)
        if chars >= 8 * tokens:
            break
    return "\n\n".join(texts)


def _encode(tokenizer, text: str, tokens: int) -> Tensor:
    ids = tokenizer(text, add_special_tokens=True, return_tensors="pt")["input_ids"][:, :tokens]
    return ids  # [1, n]


def heldout_ids(tokenizer, tokens: int = 1024) -> Tensor:
    """input_ids [1, n <= tokens] of the fixed held-out text (ShareGPT's test split)."""
    if tokens < 2:
        raise TjdkitError(f"the held-out text needs at least 2 tokens, got {tokens}")
    return _encode(tokenizer, _rows_text(HELDOUT_DATASET, "test", tokens), tokens)


def calibration_ids(spec: str, tokenizer, tokens: int = 512) -> Tensor:
    """input_ids [1, n <= tokens] of a dataset's train split, a text file, or the text itself."""
    from tjdkit.data.sources import DATASETS

    text_spec = str(spec)
    if text_spec in DATASETS:
        text = _rows_text(text_spec, "train", tokens)
    else:
        path = Path(text_spec).expanduser()
        looks_like_path = text_spec.endswith((".txt", ".md")) or ("/" in text_spec and "\n" not in text_spec and " " not in text_spec)
        if _is_file(path):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise TjdkitError(f"cannot read calibration file {path}: {exc}") from None
        elif looks_like_path:
            raise TjdkitError(
                f"calibration file not found: {path} (give a text file, literal text, or a dataset: {', '.join(DATASETS)})"
            )
        else:
            text = text_spec
    ids = _encode(tokenizer, text, tokens)
    if ids.shape[1] < MIN_CALIBRATION_TOKENS:
        raise TjdkitError(
            f"calibration text too short: {ids.shape[1]} tokens, need at least {MIN_CALIBRATION_TOKENS}"
        )
    return ids


def _is_file(path: Path) -> bool:
    """Path.is_file, False for text too long to be a file name (stat raises ENAMETOOLONG)."""
    try:
        return path.is_file()
    except OSError:
        return False


@torch.no_grad()
def perplexity(model, ids: Tensor) -> float:
    """exp(mean next-token cross-entropy) of `ids` [1, n] under `model`, in float32."""
    from tjdkit.decoding import output_logits

    device = next(model.parameters()).device
    ids = ids.to(device)
    hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]  # [n, D]
    targets = ids[0, 1:]  # [n - 1]
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, targets.shape[0], _LOGIT_CHUNK):
        stop = min(start + _LOGIT_CHUNK, targets.shape[0])
        logits = output_logits(model, hidden[start:stop])  # [chunk, V] float32
        total += torch.nn.functional.cross_entropy(logits, targets[start:stop], reduction="sum").double().cpu()
    return float(torch.exp(total / targets.shape[0]))
