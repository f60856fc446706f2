"""The head bench measures: trained once per (model, head, rank, horizon, dataset, recipe) with
the `bench-<dataset>` recipe, then cached, so a second `tjdkit bench` starts at once. The
recipe's digest (and the dataset's split version) is part of the key: when a tjdkit release
changes the recipe (more data, more steps) or the splits, bench trains the new head instead of
measuring the old one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Optional

from tjdkit.errors import TjdkitError


def head_cache_dir(model: str, head: str, rank: int, horizon: int, dataset: str) -> Path:
    """One directory per key; model paths and hub ids (slashes) become one safe name."""
    import hashlib
    import re

    from tjdkit.data.sources import split_version
    from tjdkit.models.cache import cache_root
    from tjdkit.recipes import dump_recipe

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_.") or "model"
    keyed = dump_recipe(bench_recipe(dataset, model, head, rank, horizon))
    version = split_version(dataset)
    if version != 1:  # a head trained and checkpoint-chosen on the old splits is another head
        keyed += f"\nsplit_version: {version}\n"
    digest = hashlib.sha256(keyed.encode()).hexdigest()[:8]
    return cache_root() / "heads" / f"{safe}-{head}-r{rank}-h{horizon}-{dataset}-{digest}"


def bench_recipe(dataset: str, model: str, head: str, rank: int, horizon: int):
    """The recipe bench trains with: `bench-<dataset>` (self-distilled, so drafts match what
    the model would write) with the model and head structure asked for."""
    from tjdkit.config import TrainRecipe
    from tjdkit.recipes import find_recipe, load_recipe

    name = f"bench-{dataset}"
    try:
        find_recipe(name)
    except TjdkitError:
        raise TjdkitError(
            f"no bench recipe for dataset '{dataset}' (bench-stemp, bench-sharegpt ship with tjdkit): "
            f"train a head with `tjdkit train` and pass --head-dir"
        ) from None
    flags = {"model.name": model, "head.name": head, "head.rank": rank, "head.horizon": horizon}
    return load_recipe(name, TrainRecipe, (), flags)


def resolve_head_run(
    model: str,
    head: str,
    rank: int,
    horizon: int,
    dataset: str,
    loaded=None,
    on_event: Optional[Callable[[dict], None]] = None,
) -> tuple[Path, bool]:
    """The cached run for (model, head, rank, horizon, dataset) -> (run dir, trained now).

    Trains it with the bench recipe when missing. Training happens in a sibling
    `.training` directory that becomes the cache entry only when training has finished, so
    an interrupted run is never mistaken for a finished head: the next call resumes it.

    `loaded` is the (model, tokenizer) to train, or a function returning them, called only
    when training is needed (so a cached head loads nothing twice); None lets train() load it.
    `on_event` first gets {"kind": "head_cached" or "head_training", "dir", "model", "head",
    "rank", "horizon", "dataset"} (a caller's message: reused, or trained now after the checks
    passed), then train()'s events.
    """
    from tjdkit.fileio import check_output_dir
    from tjdkit.training.heads import check_head, train
    from tjdkit.training.runs import has_trainer_state, is_run

    if horizon < 2:
        raise TjdkitError(f"bench needs a head with horizon >= 2 to draft anything, got {horizon}")
    final = head_cache_dir(model, head, rank, horizon, dataset)
    emit = on_event or (lambda event: None)
    key = {"dir": final, "model": model, "head": head, "rank": rank, "horizon": horizon, "dataset": dataset}
    if is_run(final):
        emit({"kind": "head_cached", **key})
        return final, False
    recipe = bench_recipe(dataset, model, head, rank, horizon)
    partial = final.with_name(final.name + ".training")
    check_head(recipe)  # before anything slow: a head that cannot fit is one line
    check_output_dir(partial, force=True, what="the head cache")  # writable, before training
    emit({"kind": "head_training", **key})
    if callable(loaded):
        loaded = loaded()
    model_obj, tokenizer = loaded if loaded is not None else (None, None)
    resume = has_trainer_state(partial / "last")
    if partial.exists() and not resume:  # killed before its first last/, or an older tjdkit's pickled state: start over
        shutil.rmtree(partial)
    train(recipe, partial, model_obj, tokenizer, resume=resume, on_event=on_event)
    if final.exists():  # another process finished first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
    else:
        os.replace(partial, final)
    return final, True
