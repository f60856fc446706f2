"""The TJD framework's model API: a backbone and a joint head as one model (`TJD`), with a
loss, generation and training; a custom backbone comes in by subclassing (see `tjd.model`).

    tjd = MyTJD(n_embd=64, vocab_size=512, model_head="cp", rank=2, horizon=4)
    tokens = tjd.generate(input_ids, mode="verify")
"""

from tjdkit.tjd.backbone import LanguageModel, RecomputeCache
from tjdkit.tjd.model import TJD, TJDOutput, TransformersTJD

__all__ = ["LanguageModel", "RecomputeCache", "TJD", "TJDOutput", "TransformersTJD"]
