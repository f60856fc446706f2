"""One entry point for every dataset: `dataset_rows(name, split, ...)`.

Every source yields rows with exactly the keys prompt, answer, text (= prompt + answer)
and target (a float; the accepted answers, a list of strings, where the answer is text;
None where the data has no answer to score).
"""

from __future__ import annotations

import importlib
from typing import Optional

from tjdkit.data.splits import check_split
from tjdkit.errors import TjdkitError

DATASETS = ("stemp", "sharegpt", "gsm8k", "smiles", "capitals")


def _dataset_module(name: str):
    if name not in DATASETS:
        raise TjdkitError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    return importlib.import_module(f"tjdkit.data.{name}")


def dataset_splits(name: str) -> tuple[str, ...]:
    """The splits a dataset offers."""
    return tuple(_dataset_module(name).SPLITS)


def split_version(name: str) -> int:
    """Bumped when a dataset's splits change, so what was trained or cached on the old ones is not reused."""
    return int(getattr(_dataset_module(name), "SPLIT_VERSION", 1))


def dataset_rows(name: str, split: str, size: Optional[int] = None, seed: int = 0, tokenizer=None) -> list[dict]:
    """Rows of one split; `tokenizer` renders chat data with its template (the others ignore it)."""
    check_split(name, split, dataset_splits(name))
    if size is not None and size < 0:
        raise TjdkitError(f"size must be >= 0, got {size}")
    if name == "stemp":
        from tjdkit.data.stemp import stemp_rows

        return stemp_rows(split, size, seed)
    if name == "sharegpt":
        from tjdkit.data.sharegpt import sharegpt_rows

        return sharegpt_rows(split, size, seed, tokenizer)
    if name == "capitals":
        from tjdkit.data.capitals import capitals_rows

        return capitals_rows(split, size, seed)
    if name == "smiles":
        from tjdkit.data.smiles import smiles_rows

        return smiles_rows(split, size, seed)
    from tjdkit.data.gsm8k import gsm8k_rows

    return gsm8k_rows(split, size, seed)
