"""`--rank auto` as a perplexity budget, checked against independent truth: brute-force enumeration
of every per-layer choice for the knapsack, tensorly's HOSVD for the truncations, and perplexity
measured afresh on the factorised model for the budget."""

from __future__ import annotations

import copy
import itertools
import math
import random

import pytest
import torch

from tjdkit.factorize import FactorizeOptions, factorize_model
from tjdkit.factorize.sensitivity import LayerCurve, Option, choose_options, hosvd_factors, truncated_tucker
from tjdkit.factorize.texts import calibration_ids, perplexity
from tjdkit.factorize.tucker import activation_scale, attention_tensor, scale_dmodel, tucker_layer

TEXT = "The capital of France is Paris. The quick brown fox jumps over the lazy dog. Question: what is the answer? " * 6
FAST = dict(calibration=TEXT, calibration_tokens=128, budget_tokens=96, eval_tokens=0)


def random_curves(rng: random.Random, layers: int, options: int) -> list[LayerCurve]:
    curves = []
    for index in range(layers):
        dense = 1000
        curve = LayerCurve(index, dense, [Option(None, dense, 0.0)])
        for _ in range(options):
            curve.options.append(Option((1, 1, 1), rng.randint(100, 999), rng.uniform(-0.002, 0.02)))
        curves.append(curve)
    return curves


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_matches_brute_force_enumeration(seed):
    rng = random.Random(seed)
    curves = random_curves(rng, layers=4, options=3)
    budget = rng.uniform(0.005, 0.04)
    picked = choose_options(curves, budget, bins=2000)
    cost = sum(max(o.log_ppl_increase, 0.0) for o in picked)
    assert cost <= budget + 1e-12
    best = min(
        sum(o.parameters for o in combo)
        for combo in itertools.product(*(c.options for c in curves))
        if sum(max(o.log_ppl_increase, 0.0) for o in combo) <= budget
    )
    # Rounding costs up to 1/bins of the budget can only cost a little optimality, never the budget.
    relaxed = min(
        sum(o.parameters for o in combo)
        for combo in itertools.product(*(c.options for c in curves))
        if sum(max(o.log_ppl_increase, 0.0) for o in combo) <= budget * (1 - len(curves) / 2000)
    )
    assert best <= sum(o.parameters for o in picked) <= relaxed


def test_knapsack_keeps_everything_dense_without_budget():
    curves = random_curves(random.Random(0), layers=3, options=2)
    assert [o.ranks for o in choose_options(curves, 0.0)] == [None, None, None]


@pytest.fixture(scope="module")
def tiny():
    from tjdkit.models import load_model

    return load_model("tiny-gemma3")


@pytest.mark.parametrize("scaled", [False, True])
def test_truncations_of_one_hosvd_equal_tuckers_of_each_rank(tiny, scaled):
    model, _ = tiny
    attn = model.model.layers[0].self_attn
    tensor = attention_tensor(attn, model.config).float()
    scale = activation_scale(torch.randn(64, tensor.shape[0]).abs() + 0.1) if scaled else None
    data = scale_dmodel(tensor, scale)
    factors = hosvd_factors(data)
    for ranks in [(8, 4, 2), (16, 8, 4), tuple(tensor.shape[:3])]:
        ours = truncated_tucker(data, factors, ranks, scale).reconstruct()
        reference = tucker_layer(tensor, ranks, input_scale=scale).reconstruct()
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_auto_rank_stays_within_the_budget_measured_afresh(tiny):
    model, tokenizer = tiny
    model = copy.deepcopy(model).eval()
    ids = calibration_ids(TEXT, tokenizer, 128)[:, 96:]  # the check's tokens: those the layers were not measured on
    dense_ppl = perplexity(model, ids)
    dense_logits = model(ids).logits
    report = factorize_model(model, tokenizer, FactorizeOptions(rank="auto", max_ppl_increase=30.0, **FAST))
    budget = report.budget
    assert budget["fits"], budget
    assert budget["perplexity_dense"] == pytest.approx(dense_ppl, rel=1e-5)
    measured = perplexity(model, ids)  # the factorised model as the user gets it
    assert measured / dense_ppl - 1 <= 0.30 + 1e-4
    assert measured == pytest.approx(budget["perplexity_chosen"], rel=1e-3)
    assert report.parameters_after < report.parameters_before
    assert all(r.parameters_after <= r.parameters_before for r in report.layers)
    kept = {r.layer for r in report.layers if r.extra.get("dense")}
    assert set(report.metadata()["layers"]) == {str(r.layer) for r in report.layers} - {str(i) for i in kept}
    for row in report.layers:
        curve = budget["curves"][str(row.layer)]
        assert curve[0]["ranks"] is None and all(o["parameters"] < curve[0]["parameters"] for o in curve[1:])
        if row.layer not in kept:
            assert list(row.ranks) in [o["ranks"] for o in curve[1:]]
    assert not torch.allclose(model(ids).logits, dense_logits)


def changed_layers(model, originals) -> int:
    return sum(
        any(not torch.equal(getattr(layer.self_attn, n).weight, w) for n, w in saved.items())
        for layer, saved in zip(model.model.layers, originals)
    )


def weights_of(model):
    return [{n: getattr(l.self_attn, n).weight.detach().clone() for n in ("q_proj", "k_proj", "v_proj", "o_proj")} for l in model.model.layers]


def test_nothing_fits_when_every_change_costs_more_than_the_budget(tiny):
    from tjdkit.factorize.sensitivity import search_ranks

    model, tokenizer = tiny
    model = copy.deepcopy(model).eval()
    originals = weights_of(model)
    ids = calibration_ids(TEXT, tokenizer, 128)
    before = model(ids).logits

    def costly(m, x):  # every changed layer costs 10%
        return perplexity(m, x) * (1.10 ** changed_layers(m, originals))

    layers = model.model.layers
    choice = search_ranks(model, layers, range(len(layers)), {}, ids, 0.05, costly)
    assert not choice.fits and choice.perplexity == choice.dense_perplexity
    torch.testing.assert_close(model(ids).logits, before)  # left as it was
    # the lightest size of each layer is already over the budget alone: no heavier one is tried
    assert all(len(curve.options) == 2 for curve in choice.curves.values())


def test_a_combination_over_budget_is_tightened_until_it_fits(tiny):
    from tjdkit.factorize.sensitivity import search_ranks

    model, tokenizer = tiny
    model = copy.deepcopy(model).eval()
    originals = weights_of(model)
    ids = calibration_ids(TEXT, tokenizer, 128)
    dense = perplexity(model, ids)

    def interacting(m, x):  # each layer alone costs 1%; together they cost far more than the sum
        n = changed_layers(m, originals)
        return dense * (1.01 if n == 1 else 1.0 + 0.05 * n * n if n else 1.0)

    layers = model.model.layers
    choice = search_ranks(model, layers, range(len(layers)), {}, ids, 0.025, interacting)
    chosen = sum(r is not None for r in choice.ranks.values())
    assert choice.attempts > 1 and chosen == 1, (choice.attempts, choice.ranks)
    assert choice.increase <= 0.025
    sizes = max(len(curve.options) for curve in choice.curves.values())
    assert sizes > 2 and all(len(curve.options) == sizes for curve in choice.curves.values())  # 1% each: every size tried


def test_energy_rank_keeps_the_old_rule(tiny):
    model, tokenizer = tiny
    model = copy.deepcopy(model).eval()
    report = factorize_model(model, tokenizer, FactorizeOptions(rank="energy", energy=1.0, **FAST))
    assert report.budget is None
    assert all(r.relative_error < 1e-4 for r in report.layers)


def test_cli_reports_the_budget_and_saves_a_loadable_model(run_cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        "factorize", "tiny-gemma3", "--rank", "auto", "--max-ppl-increase", "30", "--calibration", TEXT,
        "--calibration-tokens", "128", "--eval-tokens", "64", "--set", "factorize.budget_tokens=96", "--out", str(out),
    )
    assert code == 0, stderr
    assert "rank auto: smallest attention within +30.0% perplexity" in stdout
    from tjdkit.models import load_model

    loaded, tokenizer = load_model(str(out))
    ids = tokenizer(TEXT, return_tensors="pt").input_ids[:, :64]
    assert math.isfinite(perplexity(loaded, ids))


def test_the_report_says_in_one_line_when_nothing_fits():
    from types import SimpleNamespace

    from tjdkit.ui.factorize import budget_line

    report = SimpleNamespace(budget={"fits": False, "max_ppl_increase": 0.01}, layers=[])
    line = budget_line(report)
    assert "nothing fits a 1.0% perplexity budget" in line and "\n" not in line
    assert budget_line(SimpleNamespace(budget=None, layers=[])) is None


def test_shortlist_perplexity_is_exact_with_the_whole_vocabulary_and_a_lower_bound_otherwise(tiny):
    from tjdkit.factorize.sensitivity import ShortlistPerplexity

    model, tokenizer = tiny
    ids = calibration_ids(TEXT, tokenizer, 128)
    exact = perplexity(model, ids)
    whole = ShortlistPerplexity(model, ids, k=model.config.vocab_size)
    assert whole.size == model.config.vocab_size
    assert whole(model, ids) == pytest.approx(exact, rel=1e-5)
    short = ShortlistPerplexity(model, ids, k=8)
    assert short.size < model.config.vocab_size
    assert short(model, ids) <= exact


def test_shortlist_divergence_is_the_kl_from_the_dense_model(tiny):
    """With the whole vocabulary, a trial's log ratio to the dense score is KL(dense || trial) per
    token, computed here from the two models' full logits; the dense model scores its own NLL."""
    from tjdkit.decoding.forward import output_logits
    from tjdkit.factorize.sensitivity import ShortlistDivergence

    model, tokenizer = tiny
    ids = calibration_ids(TEXT, tokenizer, 128)
    score = ShortlistDivergence(model, ids, k=model.config.vocab_size, bound=False)
    bound = ShortlistDivergence(model, ids, k=model.config.vocab_size)
    dense = score(model, ids)
    assert dense == pytest.approx(perplexity(model, ids), rel=1e-5)
    trial = copy.deepcopy(model)
    with torch.no_grad():
        trial.model.layers[0].self_attn.o_proj.weight.mul_(0.5)  # (q and k pass through norms)

    def log_probs(m):
        with torch.no_grad():
            hidden = m.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
            return torch.log_softmax(output_logits(m, hidden), dim=-1)

    p, q = log_probs(model), log_probs(trial)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert kl > 0
    assert math.log(score(trial, ids) / dense) == pytest.approx(kl, rel=1e-4)
    # the bound: the mean plus t(0.95, 7) standard errors of 8 contiguous blocks' means
    per_position = (p.exp() * (p - q)).sum(-1).double()
    size = per_position.numel() // 8
    blocks = torch.stack([per_position[b * size : (b + 1) * size].mean() for b in range(8)])
    expected = kl + 1.895 * float(blocks.std()) / math.sqrt(8)
    assert expected > kl
    assert math.log(bound(trial, ids) / dense) == pytest.approx(expected, rel=1e-4)
    assert bound(model, ids) == pytest.approx(dense, rel=1e-6)  # the dense model moves nothing: no spread
