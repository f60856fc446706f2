"""smiles: the 5k NCI molecules RDKit ships, with their TPSA, for Hyformer (offline).

RDKit's `NCI/first_5k.tpsa.csv` (SMILES,TPSA) and `NCI/first_5K.smi` (SMILES<TAB>id) hold
the same 4999 SMILES in the same order, so the csv alone gives molecules and property.
It repeats 99 lines and holds 8 that RDKit rejects (hypervalent Al, Hg, Si, P...); both
are dropped so that no molecule sits in two splits and every training string is valid
to the referee that scores generations. The 80/10/10 split uses a constant seed: the
held-out test set never moves with the training seed.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tjdkit.data.splits import check_split
from tjdkit.errors import TjdkitError

SPLITS = ("train", "eval", "test")
SPLIT_SEED = 5000  # fixed on purpose: changing it reshuffles the held-out molecules
LM_PROMPT = "<lm>"  # the Hyformer tokenizer's bos_token, so load_examples adds no other


@dataclass(frozen=True)
class Molecule:
    smiles: str
    tpsa: float  # topological polar surface area, Å²


def require_rdkit():
    """The `rdkit` package, or a one-line error saying how to get it."""
    try:
        import rdkit as module
        from rdkit import Chem, RDLogger  # noqa: F401  (the submodules the callers use)
    except ImportError:
        raise TjdkitError("the smiles dataset needs RDKit: pip install 'tjdkit[chem]'") from None
    RDLogger.DisableLog("rdApp.*")  # unparsable SMILES are counted, not logged
    return module


def data_dir() -> Path:
    require_rdkit()
    from rdkit import RDConfig

    return Path(RDConfig.RDDataDir) / "NCI"


def read_csv() -> list[Molecule]:
    """Every line of first_5k.tpsa.csv, repeats and all."""
    molecules = []
    for line in (data_dir() / "first_5k.tpsa.csv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            smiles, tpsa = line.rsplit(",", 1)
            molecules.append(Molecule(smiles.strip(), float(tpsa)))
    return molecules


def read_smi() -> list[str]:
    """The SMILES column of first_5K.smi."""
    lines = (data_dir() / "first_5K.smi").read_text().splitlines()
    return [line.split("\t", 1)[0].strip() for line in lines if line.strip()]


@functools.lru_cache(maxsize=1)
def all_molecules() -> tuple[Molecule, ...]:
    """Distinct SMILES RDKit parses, in file order."""
    Chem = require_rdkit().Chem
    seen: set[str] = set()
    kept = []
    for molecule in read_csv():
        if molecule.smiles not in seen and Chem.MolFromSmiles(molecule.smiles) is not None:
            kept.append(molecule)
        seen.add(molecule.smiles)
    return tuple(kept)


@functools.lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[Molecule, ...]]:
    molecules = list(all_molecules())
    random.Random(SPLIT_SEED).shuffle(molecules)
    held_out = len(molecules) // 10
    train = len(molecules) - 2 * held_out
    return {
        "train": tuple(molecules[:train]),
        "eval": tuple(molecules[train : train + held_out]),
        "test": tuple(molecules[train + held_out :]),
    }


def smiles_split(split: str, size: Optional[int] = None, seed: int = 0) -> list[Molecule]:
    """The split's molecules, or a seeded sample of `size` of them (kept in the split's order)."""
    check_split("smiles", split, SPLITS)
    if size is not None and size < 0:
        raise TjdkitError(f"size must be >= 0, got {size}")
    molecules = _splits()[split]
    if size is None or size >= len(molecules):
        return list(molecules)
    chosen = sorted(random.Random(seed).sample(range(len(molecules)), size))
    return [molecules[i] for i in chosen]


def smiles_rows(split: str, size: Optional[int] = None, seed: int = 0) -> list[dict]:
    """Rows for a causal LM: the prompt is the `<lm>` task token, the answer the SMILES.

    TPSA is not written in the text, so target stays None (accuracy scoring reads numbers
    after ####); property prediction takes it from `smiles_split`.
    """
    return [
        {"prompt": LM_PROMPT, "answer": m.smiles, "text": LM_PROMPT + m.smiles, "target": None}
        for m in smiles_split(split, size, seed)
    ]
