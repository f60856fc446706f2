"""A SMILES tokenizer for Hyformer: one token per atom, bond, branch or ring closure.

Chemistry-aware tokens (`Cl` and `[nH]` are single tokens, not letters) keep sequences
short and make every token a meaningful unit, so decoding is an exact inverse of
encoding. The task tokens choose Hyformer's mode: `<lm>` causal generation, `<mlm>`
masked prediction, `<pred>` property prediction.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from tjdkit.errors import TjdkitError

# Schwaller et al.'s pattern: bracket atoms, two-letter halogens before their first letter,
# organic and aromatic atoms, branches, bonds and ring closures (%NN before single digits).
SMILES_PATTERN = (
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])"
)
_REGEX = re.compile(SMILES_PATTERN)

SPECIAL_TOKENS = ["<pad>", "<unk>", "<eos>", "<mask>", "<lm>", "<mlm>", "<pred>"]  # ids 0..6
TASK_TOKENS = {"lm": "<lm>", "mlm": "<mlm>", "prediction": "<pred>"}

# Always in the vocabulary, so a tokenizer built without a corpus still covers ordinary SMILES.
BASE_TOKENS = [
    *["B", "C", "N", "O", "S", "P", "F", "I", "Cl", "Br"],
    *["b", "c", "n", "o", "s", "p"],
    *["(", ")", ".", "=", "#", "-", "+", "\\", "/", ":", "~", "@", "?", ">", "*", "$"],
    *[str(digit) for digit in range(10)],
    *["[nH]", "[NH+]", "[NH2+]", "[NH3+]", "[N+]", "[N-]", "[n+]", "[n-]", "[O-]", "[O+]", "[OH+]"],
    *["[C@H]", "[C@@H]", "[C@]", "[C@@]", "[CH]", "[CH2]", "[C]", "[C-]", "[S+]", "[S-]", "[SH]", "[S@]", "[S@@]"],
    *["[P+]", "[PH]", "[Si]", "[Se]", "[se]", "[B-]", "[H]"],
    *["[Na+]", "[K+]", "[Li+]", "[Cl-]", "[Br-]", "[I-]", "[F-]", "[Na]", "[K]", "[Ca+2]", "[Mg+2]", "[Zn+2]"],
]


def smiles_tokens(text: str) -> list[str]:
    """The SMILES split into tokens; runs the pattern does not match stay as their own pieces."""
    return [piece for piece in _REGEX.split(text) if piece]


def build_smiles_tokenizer(corpus: Iterable[str] = (), max_length: int = 256):
    """A word-level `PreTrainedTokenizerFast`: specials, BASE_TOKENS, then the corpus's new tokens.

    Corpus tokens come by descending count, then text, so the same corpus gives the same ids.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = list(dict.fromkeys([*SPECIAL_TOKENS, *BASE_TOKENS]))
    counts = Counter(token for text in corpus for token in smiles_tokens(text))
    known = set(vocab)
    vocab += [token for token, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if token not in known]

    core = Tokenizer(models.WordLevel(vocab={token: i for i, token in enumerate(vocab)}, unk_token="<unk>"))
    core.add_special_tokens(SPECIAL_TOKENS)  # matched whole before the SMILES split
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SMILES_PATTERN), behavior="isolated")
    core.decoder = decoders.Fuse()  # "CC(=O)O", not "C C ( = O ) O"
    lm = vocab.index(TASK_TOKENS["lm"])
    core.post_processor = processors.TemplateProcessing(
        single="<lm> $A", pair="<lm> $A $B:1", special_tokens=[("<lm>", lm)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<lm>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        additional_special_tokens=["<mlm>", "<pred>"],
        model_max_length=max_length,
        padding_side="right",
    )


def task_token_id(tokenizer, task: str) -> int:
    """The id of the token that puts Hyformer in `task`'s mode."""
    if task not in TASK_TOKENS:
        raise TjdkitError(f"unknown Hyformer task '{task}' (known: {', '.join(TASK_TOKENS)})")
    return tokenizer.convert_tokens_to_ids(TASK_TOKENS[task])


def encode_smiles(tokenizer, smiles: list[str], task: str, max_length: int):
    """Right-padded ids [B, T] and attention mask [B, T]; each row is task token, SMILES, <eos>."""
    import torch

    task_id = task_token_id(tokenizer, task)
    if max_length < 1:
        raise TjdkitError(f"max_length must be >= 1, got {max_length}")
    # verbose=False: rows are cut to max_length here, so the too-long warning is noise.
    bodies = tokenizer(list(smiles), add_special_tokens=False, verbose=False).input_ids if smiles else []
    rows = [([task_id, *body, tokenizer.eos_token_id])[:max_length] for body in bodies]
    width = max((len(row) for row in rows), default=0)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
