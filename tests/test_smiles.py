"""Hyformer's SMILES tokenizer, the rdkit-shipped smiles dataset and its metrics."""

import math
import subprocess
import sys

import pytest

pytest.importorskip("rdkit")

from tjdkit.config import DataSection  # noqa: E402
from tjdkit.data import smiles as smiles_data  # noqa: E402
from tjdkit.data.examples import load_examples  # noqa: E402
from tjdkit.data.smiles import Molecule, read_csv, read_smi, smiles_rows, smiles_split  # noqa: E402
from tjdkit.data.smiles_metrics import canonical_smiles, generation_quality, regression_quality  # noqa: E402
from tjdkit.data.sources import dataset_rows, dataset_splits  # noqa: E402
from tjdkit.errors import TjdkitError  # noqa: E402
from tjdkit.models.hyformer.tokenizer import (  # noqa: E402
    BASE_TOKENS,
    SPECIAL_TOKENS,
    build_smiles_tokenizer,
    encode_smiles,
    smiles_tokens,
    task_token_id,
)

# Fixed layout: specials 0..6, then BASE_TOKENS from 7 ("B", "C", "N", "O", ...).
PAD, UNK, EOS, MASK, LM, MLM, PRED = range(7)
C_ID, O_ID = 8, 10


@pytest.fixture(scope="module")
def base_tok():
    return build_smiles_tokenizer()


@pytest.fixture(scope="module")
def train_tok():
    return build_smiles_tokenizer(m.smiles for m in smiles_split("train"))


@pytest.mark.parametrize(
    "smiles, tokens",
    [
        ("Clc1ccccc1Br", ["Cl", "c", "1", "c", "c", "c", "c", "c", "1", "Br"]),
        ("C[C@@H](N)C(=O)O", ["C", "[C@@H]", "(", "N", ")", "C", "(", "=", "O", ")", "O"]),
        ("c1ccc2c(c1)%10", ["c", "1", "c", "c", "c", "2", "c", "(", "c", "1", ")", "%10"]),
        ("[Na+].[Cl-]", ["[Na+]", ".", "[Cl-]"]),
        ("O=[N+]([O-])c1ccccc1", ["O", "=", "[N+]", "(", "[O-]", ")", "c", "1", "c", "c", "c", "c", "c", "1"]),
        ("CC#N", ["C", "C", "#", "N"]),
        ("F/C=C\\F", ["F", "/", "C", "=", "C", "\\", "F"]),
    ],
)
def test_smiles_tokens_split_tricky_smiles(base_tok, smiles, tokens):
    assert smiles_tokens(smiles) == tokens
    ids = base_tok(smiles, add_special_tokens=False).input_ids
    assert base_tok.convert_ids_to_tokens(ids) == [t if t in BASE_TOKENS else "<unk>" for t in tokens]


def test_fixed_ids_and_special_tokens(base_tok):
    assert [base_tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert base_tok.convert_ids_to_tokens([C_ID, O_ID]) == ["C", "O"]
    assert len(base_tok) == 7 + len(BASE_TOKENS) and len(set(BASE_TOKENS)) == len(BASE_TOKENS)
    assert base_tok("CCO").input_ids == [LM, C_ID, C_ID, O_ID]
    assert base_tok("<lm>", add_special_tokens=False).input_ids == [LM]
    assert base_tok("C<pred>C<eos>", add_special_tokens=False).input_ids == [C_ID, PRED, C_ID, EOS]
    ids = base_tok("CC(=O)O").input_ids
    assert base_tok.decode(ids, skip_special_tokens=True) == "CC(=O)O"
    assert base_tok.decode(ids) == "<lm>CC(=O)O"
    assert (base_tok.bos_token, base_tok.eos_token, base_tok.pad_token) == ("<lm>", "<eos>", "<pad>")
    assert (base_tok.unk_token, base_tok.mask_token, base_tok.model_max_length) == ("<unk>", "<mask>", 256)
    assert base_tok.padding_side == "right"
    assert (task_token_id(base_tok, "lm"), task_token_id(base_tok, "mlm"), task_token_id(base_tok, "prediction")) == (
        LM,
        MLM,
        PRED,
    )
    with pytest.raises(TjdkitError, match="lm, mlm, prediction"):
        task_token_id(base_tok, "regression")


def test_unmatched_characters_become_unk(base_tok):
    assert smiles_tokens("CXC") == ["C", "X", "C"] and smiles_tokens("C C") == ["C", " ", "C"]
    for text in ("CXC", "C C"):
        ids = base_tok(text, add_special_tokens=False).input_ids
        assert ids == [C_ID, UNK, C_ID]


def test_corpus_tokens_follow_base_by_count_then_text():
    tok = build_smiles_tokenizer(["[Fe]C[Zn]", "[Zn]CC", "[Cu]"], max_length=64)
    first_new = 7 + len(BASE_TOKENS)
    assert tok.convert_tokens_to_ids(["[Zn]", "[Cu]", "[Fe]"]) == [first_new, first_new + 1, first_new + 2]
    assert len(tok) == first_new + 3 and tok.model_max_length == 64


def test_whole_rdkit_file_round_trips_without_unk():
    lines = [m.smiles for m in read_csv()]
    assert len(lines) == 4999
    tok = build_smiles_tokenizer(lines)
    ids = tok(lines, add_special_tokens=False, verbose=False).input_ids
    assert not any(UNK in row for row in ids)
    assert tok.batch_decode(ids, skip_special_tokens=True) == lines
    assert all("".join(smiles_tokens(s)) == s for s in lines)


def test_train_vocabulary_covers_almost_everything(train_tok):
    held_out = [m.smiles for split in ("eval", "test") for m in smiles_split(split)]
    ids = train_tok(held_out, add_special_tokens=False, verbose=False).input_ids
    assert sum(UNK in row for row in ids) <= 10  # only rare metals unseen in train


def test_save_and_autotokenizer_reload(train_tok, tmp_path):
    from transformers import AutoTokenizer

    train_tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    texts = [m.smiles for m in smiles_split("test", size=50)] + ["CXC", "<mlm>C<mask>O"]
    assert loaded(texts).input_ids == train_tok(texts).input_ids
    assert loaded(texts, add_special_tokens=False).input_ids == train_tok(texts, add_special_tokens=False).input_ids
    ids = train_tok(texts[:50]).input_ids
    assert loaded.batch_decode(ids, skip_special_tokens=True) == texts[:50]
    assert loaded.get_vocab() == train_tok.get_vocab()
    assert loaded.all_special_tokens == train_tok.all_special_tokens
    assert loaded.all_special_ids == train_tok.all_special_ids
    for name in ("bos", "eos", "pad", "unk", "mask"):
        assert getattr(loaded, f"{name}_token_id") == getattr(train_tok, f"{name}_token_id")
    assert (loaded.model_max_length, loaded.padding_side) == (256, "right")


def test_encode_smiles_layout(base_tok):
    ids, mask = encode_smiles(base_tok, ["CCO", "C"], "lm", max_length=10)
    assert ids.tolist() == [[LM, C_ID, C_ID, O_ID, EOS], [LM, C_ID, EOS, PAD, PAD]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    ids, mask = encode_smiles(base_tok, ["CCO", "O"], "prediction", max_length=3)
    assert ids.tolist() == [[PRED, C_ID, C_ID], [PRED, O_ID, EOS]] and mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert str(ids.dtype) == "torch.int64" and str(mask.dtype) == "torch.int64"
    with pytest.raises(TjdkitError, match="unknown Hyformer task"):
        encode_smiles(base_tok, ["C"], "generate", 8)


def test_smi_and_csv_hold_the_same_molecules():
    molecules = read_csv()
    assert read_smi() == [m.smiles for m in molecules]
    # Two carbonyl oxygens at 17.07 Å² each.
    assert molecules[0] == Molecule("CC1=CC(=O)C=CC1=O", 34.14)


def test_split_sizes_disjoint_and_fixed():
    # 4999 lines - 99 repeats - 8 RDKit cannot parse = 4892; eval and test get 4892 // 10 each.
    splits = {name: smiles_split(name) for name in dataset_splits("smiles")}
    assert {name: len(m) for name, m in splits.items()} == {"train": 3914, "eval": 489, "test": 489}
    texts = [{m.smiles for m in molecules} for molecules in splits.values()]
    assert sum(map(len, texts)) == 4892 and len(set.union(*texts)) == 4892
    assert smiles_split("test", seed=7) == splits["test"]  # the training seed never moves it
    smiles_data._splits.cache_clear()
    smiles_data.all_molecules.cache_clear()
    assert {name: smiles_split(name) for name in splits} == splits


def test_split_samples_are_seeded():
    test = smiles_split("test")
    first = smiles_split("test", size=20, seed=1)
    assert first == smiles_split("test", size=20, seed=1) and len(first) == 20
    assert smiles_split("test", size=20, seed=2) != first
    positions = [test.index(m) for m in first]
    assert positions == sorted(positions)  # a subsequence of the split
    assert smiles_split("eval", size=10_000) == smiles_split("eval") and smiles_split("eval", size=0) == []
    with pytest.raises(TjdkitError, match="unknown split"):
        smiles_split("validation")


def test_rows_through_dataset_rows():
    rows = dataset_rows("smiles", "train", 5)
    train = {m.smiles for m in smiles_split("train")}
    assert len(rows) == 5 and rows == smiles_rows("train", 5)
    for row in rows:
        assert set(row) == {"prompt", "answer", "text", "target"}
        assert row["prompt"] == "<lm>" and row["answer"] in train
        assert row["text"] == "<lm>" + row["answer"] and row["target"] is None


def test_load_examples_gives_task_token_smiles_eos(train_tok):
    examples = load_examples(DataSection(dataset="smiles", train_size=4), train_tok, "train")
    rows = dataset_rows("smiles", "train", 4)
    assert len(examples) == 4
    for example, row in zip(examples, rows):
        tokens = train_tok.convert_ids_to_tokens(example.input_ids)
        assert tokens == ["<lm>", *smiles_tokens(row["answer"]), "<eos>"]
        assert example.prompt_length == 1 and example.target is None


def test_canonical_smiles():
    assert canonical_smiles("OCC") == canonical_smiles("CCO") == "CCO"
    assert canonical_smiles("C1=CC=CC=C1") == "c1ccccc1"
    for bad in ("", "C1CC", "xyz", "C(C"):
        assert canonical_smiles(bad) is None


def test_generation_quality_by_hand():
    samples = ["CCO", "OCC", "C1CC", "xyz", "c1ccccc1", "CCN"]
    # valid: CCO, OCC, c1ccccc1, CCN (4 of 6); unique: CCO, c1ccccc1, CCN; novel: not CCO.
    quality = generation_quality(samples, ["C(O)C", "C1CC"])
    assert quality == {
        "total": 6,
        "valid": 4,
        "unique": 3,
        "novel": 2,
        "validity": 4 / 6,
        "uniqueness": 3 / 4,
        "novelty": 2 / 3,
    }
    more = samples + ["NCC", "C1=CC=CC=C1"]  # repeats of CCN and benzene: not shown again
    assert generation_quality(more, ["C(O)C"], examples=3)["examples"] == ["c1ccccc1", "CCN"]
    assert generation_quality(more, ["C(O)C"], examples=1)["examples"] == ["c1ccccc1"]
    empty = generation_quality([], [])
    assert empty["validity"] == empty["uniqueness"] == empty["novelty"] == 0.0
    invalid = generation_quality(["xyz"], [])
    assert (invalid["valid"], invalid["uniqueness"], invalid["novelty"]) == (0, 0.0, 0.0)


def test_regression_quality_by_hand():
    quality = regression_quality([1.0, 2.0, 3.0], [1.0, 3.0, 5.0], baseline=2.0)
    # Errors 0, -1, -2: SS_res 5; targets' mean 3, SS_tot 8. Baseline errors 1, -1, -3: SS 11.
    assert quality["n"] == 3
    assert quality["rmse"] == pytest.approx(math.sqrt(5 / 3)) and quality["mae"] == pytest.approx(1.0)
    assert quality["r2"] == pytest.approx(0.375)
    assert quality["baseline_rmse"] == pytest.approx(math.sqrt(11 / 3))
    assert quality["baseline_mae"] == pytest.approx(5 / 3) and quality["baseline_r2"] == pytest.approx(-0.375)
    perfect = regression_quality([4, 4], [4, 4], baseline=4)
    assert perfect["r2"] == 1.0 and perfect["rmse"] == 0.0
    with pytest.raises(TjdkitError, match="2 predictions for 3 targets"):
        regression_quality([1, 2], [1, 2, 3], 0.0)
    with pytest.raises(TjdkitError, match="at least one"):
        regression_quality([], [], 0.0)


def test_missing_rdkit_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdkit", None)  # `import rdkit` now raises ImportError
    smiles_data._splits.cache_clear()
    smiles_data.all_molecules.cache_clear()
    with pytest.raises(TjdkitError, match=r"needs RDKit: pip install 'tjdkit\[chem\]'"):
        dataset_rows("smiles", "train", 1)
    with pytest.raises(TjdkitError, match="needs RDKit"):
        canonical_smiles("CCO")


def test_modules_import_without_rdkit():
    code = (
        "import sys; import tjdkit.data.sources, tjdkit.data.smiles, tjdkit.data.smiles_metrics;"
        "from tjdkit.data.sources import dataset_splits; assert dataset_splits('smiles') == ('train', 'eval', 'test');"
        "assert 'rdkit' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
