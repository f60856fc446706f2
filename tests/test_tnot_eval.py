"""Whether TNOT helps, measured offline: the capitals evaluation, the paired-bootstrap interval
of an accuracy difference, and sweeps of TNOT settings beside one plain run per prompt."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from tjdkit.config import TnotConfig, TnotRecipe
from tjdkit.data.sources import dataset_rows
from tjdkit.errors import TjdkitError
from tjdkit.evaluation.answers import is_correct
from tjdkit.evaluation.paired import _quantile, paired_bootstrap
from tjdkit.recipes import load_recipe


def test_the_bootstrap_interval_matches_exact_enumeration_of_the_resamples():
    """Three paired items have 27 equally likely resamples: their mean differences' quantiles are
    the exact percentile interval, which many random resamples must approach."""

    def exact_quantile(q):  # the smallest value whose share of the 27 resamples reaches q
        return exact[math.ceil(q * len(exact)) - 1]

    for baseline, treated in (([1, 0, 1], [1, 1, 0]), ([0, 0, 1], [1, 1, 1])):
        differences = [t - b for b, t in zip(baseline, treated)]
        exact = sorted(sum(differences[i] for i in picks) / 3 for picks in itertools.product(range(3), repeat=3))
        result = paired_bootstrap(baseline, treated, resamples=200_000, seed=1)
        assert result.difference == pytest.approx(sum(differences) / 3) and result.items == 3 and result.level == 0.95
        assert result.low == pytest.approx(exact_quantile(0.025), abs=1e-9)
        assert result.high == pytest.approx(exact_quantile(0.975), abs=1e-9)
    assert _quantile([0.0, 1.0, 2.0], 0.25) == 0.5


def test_the_interval_narrows_with_items_and_holds_a_sure_difference():
    small = paired_bootstrap([0, 1] * 10, [1, 1] * 10)
    large = paired_bootstrap([0, 1] * 200, [1, 1] * 200)
    assert small.difference == large.difference == 0.5
    assert small.low < large.low < 0.5 < large.high < small.high
    same = paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1])
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert paired_bootstrap([0, 1] * 10, [1, 1] * 10, seed=3) == paired_bootstrap([0, 1] * 10, [1, 1] * 10, seed=3)
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])


def test_capitals_splits_are_fixed_disjoint_and_never_ask_the_worked_examples():
    """Both directions, countries and regions; a reverse question accepts every place with that capital."""
    from tjdkit.data.capitals import SHOTS

    test, eval_ = dataset_rows("capitals", "test"), dataset_rows("capitals", "eval")
    assert (len(test), len(eval_)) == (200, 240)
    assert dataset_rows("capitals", "test") == test  # the same items on every machine
    assert not {row["prompt"] for row in test} & {row["prompt"] for row in eval_}
    for row in test + eval_:
        question = row["prompt"].rsplit("\n\n", 1)[-1]
        assert question.endswith((":")) and row["prompt"].count("\n\n") == len(SHOTS)
        assert not any(f": {shot}\n" in question for shot in SHOTS)
        assert row["target"] and row["text"] == row["prompt"] + row["answer"]
        assert is_correct(row["answer"], row["target"])
    asked = {row["prompt"].rsplit("\n", 1)[-1] for row in test + eval_}
    assert asked == {"Capital:", "Country:", "US state:", "Canadian province:", "Australian state:"}
    from tjdkit.data.capitals import _items

    victoria = {item["prompt"].rsplit("\n", 1)[-1]: item["target"] for item in _items()
                if "\nCapital: Victoria\n" in item["prompt"]}
    assert victoria == {"Country:": ["Seychelles"], "Canadian province:": ["British Columbia"]}
    reordered = dataset_rows("capitals", "test", seed=5)
    assert reordered != test and sorted(map(str, reordered)) == sorted(map(str, test))
    assert dataset_rows("capitals", "test", size=7) == test[:7]


@pytest.mark.parametrize("reply, answers, right", [
    (" Bogotá.\nCountry: Peru", ["Bogota"], True),
    ("\n\n la paz ", ["Sucre", "La Paz"], True),
    (" Côte d’Ivoire", ["Ivory Coast", "Cote d'Ivoire"], True),
    (" Lima, Peru", ["Lima"], False),  # more than the answer is not the answer
    ("", ["Lima"], False),
    (" Paris\nLima", ["Lima"], False),  # only the first line counts
])
def test_text_answers_are_scored_by_the_first_line(reply, answers, right):
    assert is_correct(reply, answers) is right


def test_a_sweep_is_the_tnot_section_with_one_entry_changed_each_time():
    from tjdkit.tnot.run import sweep_configs

    recipe = load_recipe("tnot-sweep", TnotRecipe)
    settings = sweep_configs(recipe)
    assert list(settings)[0] == "tnot" and len(settings) == 1 + len(recipe.sweep) >= 8
    assert settings["tnot steps=6"] == TnotConfig(**{**vars(recipe.tnot), "steps": 6})
    assert settings["tnot adaptive=True"].adaptive and not recipe.tnot.adaptive
    assert (recipe.prompts.dataset, recipe.prompts.split) == ("capitals", "eval")
    evaluation = load_recipe("tnot-eval", TnotRecipe)
    assert (evaluation.prompts.dataset, evaluation.prompts.split, evaluation.prompts.limit) == ("capitals", "test", 200)
    assert evaluation.tnot == TnotConfig() and not evaluation.sweep  # the defaults of chat --tnot, measured
    for bad, words in (([{"stepz": 2}], "sweep[0]: stepz"), ([{"steps": -1}], "sweep[0]: steps"), ([{}], "changes nothing")):
        with pytest.raises(TjdkitError, match=words.replace("[", r"\[").replace("]", r"\]")):
            sweep_configs(TnotRecipe(sweep=bad))


def test_sweep_settings_share_one_plain_run_per_prompt_and_report_intervals():
    from tjdkit.config import GenerationSection
    from tjdkit.models import load_model
    from tjdkit.tnot.run import PromptItem, run_settings, sweep_rows

    model, tokenizer = load_model("tiny-llama")
    rows = dataset_rows("capitals", "test", size=3)
    items = [PromptItem(row["prompt"], tokenizer(row["prompt"]).input_ids, row["target"]) for row in rows]
    configs = {"tnot": TnotConfig(steps=1), "off": TnotConfig(steps=0, entropy_control=False)}
    done = []
    results = run_settings(model, tokenizer, items, configs, GenerationSection(max_new_tokens=4, temperature=0.0),
                           compare=True, on_done=lambda index, run: done.append(index))
    assert done == [0, 1, 2] and set(results) == {"tnot", "off"}
    for a, b in zip(results["tnot"].runs, results["off"].runs):
        assert a.plain_tokens == b.plain_tokens and a.plain_seconds == b.plain_seconds  # one plain run, shared
        assert b.tnot.tokens == b.plain_tokens  # no steps, no trigger: the plain model
    table = sweep_rows(results)
    assert [row["mode"] for row in table] == ["plain", "tnot", "off"]
    off = table[2]["difference"]
    assert (off["difference"], off["low"], off["high"], off["items"]) == (0.0, 0.0, 0.0, 3)
    assert table[0]["difference"] is None


def test_tnot_eval_and_sweep_run_from_the_command_line(run_cli, tmp_path):
    out = tmp_path / "sweep.json"
    code, stdout, err = run_cli("tnot", "--recipe", "tnot-sweep", "-m", "tiny-llama", "--limit", "2",
                                "--max-new-tokens", "3", "--show", "0", "--json", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    recipe = load_recipe("tnot-sweep", TnotRecipe)
    assert [row["mode"] for row in data["sweep"]][:3] == ["plain", "tnot", "tnot optimize_prompt=False"]
    assert len(data["sweep"]) == 2 + len(recipe.sweep) and all(row["prompts"] == 2 for row in data["sweep"])
    assert all(row["difference"]["items"] == 2 for row in data["sweep"][1:])
    assert "capitals/eval" in stdout  # the table
    code, _, err = run_cli("tnot", "--recipe", "tnot-eval", "-m", "tiny-llama", "--limit", "2", "--max-new-tokens", "3",
                           "--compare", "--json", str(tmp_path / "eval.json"))
    assert code == 0, err
    plain, tnot = json.loads((tmp_path / "eval.json").read_text())["summary"]
    assert plain["prompts"] == tnot["prompts"] == 2 and tnot["difference"]["level"] == 0.95
    code, _, err = run_cli("tnot", "--recipe", "tnot-sweep", "-m", "tiny-llama", "--set", "sweep=[{lrr: 1}]")
    assert code == 2 and "sweep[0]: lrr" in err and "Traceback" not in err
