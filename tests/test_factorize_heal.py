"""Healing after factorisation, checked against independent truth: KL written out as sums, the
original model's untouched weights, held-out perplexity measured afresh, and the saved directory
reloaded against the in-memory model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tjdkit.config import HealSection
from tjdkit.errors import TjdkitError
from tjdkit.factorize import FactorizeOptions, factorize_model
from tjdkit.training.heal import distillation_kl, heal, healing_parameters

TEXT = ("The capital of France is Paris. The quick brown fox jumps over the lazy dog. Question: what is the answer? "
        "Every morning the baker sells bread, milk and eggs to the people of the village. ") * 30


def test_distillation_kl_is_the_written_out_sum():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    p = teacher.softmax(-1)
    expected = (p * (p.log() - student.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(distillation_kl(student, teacher), expected)
    assert float(distillation_kl(teacher, teacher)) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny():
    from tjdkit.models import load_model

    return load_model("tiny-gemma3")


def factorized(tiny, method="tucker"):
    model, tokenizer = tiny
    teacher = copy.deepcopy(model).eval()
    student = copy.deepcopy(model).eval()
    rank = {"tucker": "2x", "tpa": "2,1,1", "latent": "8,8"}[method]
    factorize_model(student, tokenizer, FactorizeOptions(method=method, rank=rank, calibration=TEXT, calibration_tokens=128,
                                                         eval_tokens=0, steps=0))
    return student, teacher, tokenizer


SETTINGS = HealSection(tokens=640, window=32, lr=1e-3, eval_tokens=128, eval_every=5)


@pytest.mark.parametrize("method", ["tucker", "tpa", "latent"])
def test_healing_lowers_the_distillation_loss_and_trains_only_the_factors(tiny, tmp_path, method):
    student, teacher, tokenizer = factorized(tiny, method)
    trained = {id(p) for p in healing_parameters(student).values()}
    assert trained
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if id(p) not in trained}
    teacher_state = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    result = heal(student, teacher, tokenizer, SETTINGS, TEXT, tmp_path / "heal", seed=0)
    assert result.steps == (640 // 32)
    assert min(h["eval_kl"] for h in result.history if "eval_kl" in h) < result.kl_before  # distillation learns
    assert result.kl_after <= result.kl_before and result.perplexity_after <= result.perplexity_before  # never worse
    if method == "tucker":  # on this random tiny model, TPA's lower KL does not lower perplexity: undone, rightly
        assert result.kept and result.kl_after < result.kl_before and result.perplexity_after < result.perplexity_before
    for name, parameter in teacher.named_parameters():
        assert torch.equal(parameter, teacher_state[name])  # the teacher never trains
    changed = [n for n, p in student.named_parameters() if n in frozen and not torch.equal(p, frozen[n])]
    assert changed == []  # embeddings, MLPs, norms, o_proj (TPA) stay as they were
    assert (tmp_path / "heal" / "best" / "heal_weights.safetensors").is_file()
    assert (tmp_path / "heal" / "metrics.jsonl").read_text().count("\n") == result.steps


def test_healing_that_does_not_help_is_undone(tiny, tmp_path):
    student, teacher, tokenizer = factorized(tiny)
    before = {n: p.detach().clone() for n, p in healing_parameters(student).items()}
    harmful = HealSection(tokens=320, window=32, lr=50.0, eval_tokens=128, eval_every=100)  # diverges
    result = heal(student, teacher, tokenizer, harmful, TEXT, tmp_path / "heal", seed=0)
    assert not result.kept
    assert result.perplexity_after == result.perplexity_before
    for name, parameter in healing_parameters(student).items():
        assert torch.equal(parameter, before[name])


def test_a_model_without_factors_cannot_be_healed(tiny, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(TjdkitError, match="nothing to heal"):
        heal(copy.deepcopy(model), copy.deepcopy(model), tokenizer, SETTINGS, TEXT, tmp_path / "h")
    with pytest.raises(TjdkitError, match="too few"):
        heal(copy.deepcopy(model), copy.deepcopy(model), tokenizer, HealSection(tokens=10**6, window=32), TEXT, tmp_path / "h")


def test_cli_heals_reports_three_perplexities_and_saves_the_healed_factors(run_cli, tmp_path):
    out, report_path = tmp_path / "fz", tmp_path / "r.json"
    code, stdout, err = run_cli(
        "factorize", "tiny-gemma3", "--rank", "2x", "--calibration", TEXT, "--calibration-tokens", "128", "--eval-tokens", "96",
        "--heal", "640", "--set", "heal.window=32", "--set", "heal.lr=0.003", "--set", "heal.eval_tokens=128",
        "--out", str(out), "--json", str(report_path),
    )
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["heal"]["kept"] and report["heal"]["steps"] == 20
    assert report["perplexity_healed"] < report["perplexity_after"]
    assert "-> healed" in " ".join(stdout.split()) and "healing: 20 steps" in " ".join(stdout.split())
    assert (tmp_path / "fz.heal" / "last").is_dir()

    from tjdkit.factorize.texts import heldout_ids, perplexity
    from tjdkit.models import load_model

    reloaded, tokenizer = load_model(str(out))
    assert perplexity(reloaded, heldout_ids(tokenizer, 96)) == pytest.approx(report["perplexity_healed"], rel=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--heal", "640", "--materialize"], "cannot follow --materialize"),
        (["--resume"], "give --heal"),
        (["--heal", "640", "--resume", "--heal-dir", "/nonexistent/heal"], "nothing to resume"),
    ],
)
def test_cli_heal_errors(run_cli, args, message):
    code, _, err = run_cli("factorize", "tiny-gemma3", "--rank", "2x", "--eval-tokens", "0", *args)
    assert code == 2
    assert message in " ".join(err.split())
