"""Training: the shared loop (accelerate, checkpoints, exact resume), the run directory it
writes, and one job per trainable thing: joint heads on a backbone, Hyformer from scratch.

    result = train(load_recipe("stemp-cp", TrainRecipe), "runs/stemp-cp")

Names load on first use, so reading a run directory (`training.runs`) does not import torch.
"""

_NAMES = {
    "TrainResult": "heads", "train": "heads",
    "HyformerTrainResult": "hyformer", "train_hyformer": "hyformer",
    "Job": "loop", "LoopResult": "loop", "run_loop": "loop",
    "LoadedRun": "runs", "checkpoint_dir": "runs", "is_run": "runs", "load_head": "runs", "load_run": "runs",
    "read_checkpoint": "runs", "save_checkpoint": "runs",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f"tjdkit.training.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'tjdkit.training' has no attribute {name!r}")
