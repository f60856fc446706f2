"""stemp data and answer scoring."""

import statistics

import pytest

from tjdkit.data import stemp_dataset, stemp_rows
from tjdkit.data.stemp import fahrenheit, render_answer
from tjdkit.evaluation import extract_answer, is_correct


def test_stemp_rows_follow_the_seed_format():
    row = stemp_rows("test", size=1, seed=0)[0]
    assert row["prompt"].startswith("[QUESTION]\nWhat is ") and row["prompt"].endswith("°C in Fahrenheit?\n[ANSWER]")
    assert row["text"] == row["prompt"] + row["answer"]
    assert "Let's solve this step by step:" in row["answer"]
    assert row["answer"].endswith(f"####\n{row['answer'].rsplit(chr(10), 1)[1]}")
    assert is_correct(row["answer"], row["target"])


@pytest.mark.parametrize("celsius, shown", [(20, "68"), (-8, "17.6"), (-40, "-40"), (37, "98.6"), (21, "69.8")])
def test_fahrenheit_is_printed_cleanly(celsius, shown):
    assert render_answer(celsius).endswith(f"####\n{shown}")
    assert extract_answer(render_answer(celsius)) == pytest.approx(fahrenheit(celsius))


def test_splits_sizes_shift_and_seed():
    assert len(stemp_rows("train")) == 10_000
    assert len(stemp_rows("eval")) == len(stemp_rows("test")) == 100
    means = {split: statistics.mean((row["target"] - 32) * 5 / 9 for row in stemp_rows(split, 2000)) for split in ("test", "mild", "hard")}
    assert means["test"] == pytest.approx(19.5, abs=0.4)  # int() truncates N(20, 2) towards zero
    assert means["mild"] == pytest.approx(24.5, abs=0.4) and means["hard"] == pytest.approx(29.5, abs=0.4)
    assert stemp_rows("test", 20, seed=1) == stemp_rows("test", 20, seed=1)
    assert stemp_rows("test", 20, seed=1) != stemp_rows("test", 20, seed=2)
    assert stemp_rows("test", 50) != stemp_rows("eval", 50)


def test_stemp_dataset_is_a_datasets_dataset():
    data = stemp_dataset("eval", size=5)
    assert len(data) == 5 and set(data.column_names) == {"prompt", "answer", "text", "target"}


@pytest.mark.parametrize(
    "text, value",
    [("#### 42", 42.0), ("so ####\n17.6<eos>", 17.6), ("#### -40", -40.0), ("#### 1,234", 1234.0),
     ("#### $5", 5.0), ("no answer", None), ("####\nabc", None), ("#### 3 then #### 4", 3.0)],
)
def test_extract_answer(text, value):
    assert extract_answer(text) == value


def test_is_correct_compares_numbers_not_strings():
    assert is_correct("####\n68.0", 68)
    assert not is_correct("####\n68.2", 68)
    assert not is_correct("68", 68)
