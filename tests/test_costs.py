"""Draft length from the measured cost of a forward: the arithmetic against brute force, the
curve measured once per machine and model, and verify staying lossless whatever length it picks."""

import itertools
import random

import pytest
import torch

from tjdkit.decoding import costs, generate
from tjdkit.models import load_model


@pytest.fixture(autouse=True)
def fresh_curves(monkeypatch):
    monkeypatch.setattr(costs, "_costs", {})


def test_cost_at_interpolates_and_extends_the_last_slope():
    curve = {1: 10.0, 2: 12.0, 4: 20.0, 8: 20.0}
    assert costs.cost_at(curve, 2) == 12.0 and costs.cost_at(curve, 3) == 16.0 and costs.cost_at(curve, 6) == 20.0
    assert costs.cost_at({1: 10.0, 4: 16.0}, 7) == 22.0 and costs.cost_at(curve, 0) == 10.0


def test_best_draft_length_is_the_brute_force_argmax():
    rng = random.Random(0)
    for _ in range(200):
        points = sorted(rng.sample(range(1, 40), 5))
        total, curve = 0.0, {}
        for n in points:
            total += rng.uniform(0.1, 20.0)
            curve[n] = total
        accept, limit = rng.random(), rng.randint(1, 31)
        rates = {k: sum(accept**i for i in range(k + 1)) / costs.cost_at(curve, 1 + k) for k in range(1, limit + 1)}
        best = costs.best_draft_length(curve, accept, limit)
        assert rates[best] == pytest.approx(max(rates.values()))
    assert costs.best_draft_length(curve, 0.5, 0) == 0


def test_a_flat_cost_and_sure_drafts_go_long_a_steep_cost_goes_short():
    flat = {n: 100.0 for n in costs.SIZES}
    steep = {n: 100.0 * n for n in costs.SIZES}
    assert costs.best_draft_length(flat, 0.95, 31) == 31
    assert costs.best_draft_length(steep, 0.95, 31) == 1
    assert costs.best_draft_length({1: 75, 2: 97, 4: 103, 8: 130, 12: 185, 16: 169, 24: 252, 32: 300}, 0.8, 31) in range(3, 9)


def test_acceptance_rate_counts_the_rejected_try():
    rate = costs.AcceptanceRate(prior=0.5, weight=2)
    rate.update(3, 5)  # 3 accepted, the 4th tried and rejected
    rate.update(2, 2)  # all accepted: nothing rejected
    assert rate.rate == pytest.approx((1 + 5) / (2 + 4 + 2))


def test_the_curve_is_measured_once_per_machine_and_model(monkeypatch):
    from tjdkit.models.quantize import weights_copy

    model, _ = load_model("tiny-llama")
    curve = costs.forward_costs(model)
    assert set(curve) == set(costs.SIZES) and all(ms > 0 for ms in curve.values())
    monkeypatch.setattr(costs, "_costs", {})  # a new process: the cache file answers
    monkeypatch.setattr(costs, "measure_forward_costs", lambda model: pytest.fail("measured again"))
    assert costs.forward_costs(model) == curve
    monkeypatch.undo()
    fast = weights_copy(model, "fp16-weights")  # another weight format is another curve
    assert costs.cost_key(fast) != costs.cost_key(model) and set(costs.forward_costs(fast)) == set(costs.SIZES)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_verify_takes_the_length_the_costs_pay_for_and_stays_lossless(monkeypatch, name):
    model, tokenizer = load_model(name)
    ids = torch.tensor([tokenizer("one two three four five six seven eight " * 4).input_ids])
    reference, _ = generate(model, ids, mode="ar", max_new_tokens=48)
    longest = {}
    for shape, cost in (("flat", lambda n: 100.0), ("steep", lambda n: 100.0 * n)):
        curve = {n: cost(n) for n in costs.SIZES}
        monkeypatch.setattr(costs, "_costs", {costs.cost_key(model): curve})
        tokens, stats = generate(model, ids, mode="verify", max_new_tokens=48, drafter="lookup")
        assert tokens == reference, shape  # across Gemma 3's sliding window (tiny-gemma3: 32 tokens)
        longest[shape] = max(itertools.chain(stats.offered, [0]))
    assert longest["steep"] <= 1 and (longest["flat"] > 10 or longest["flat"] == 0)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
def test_tree_steps_verify_the_copy_and_the_head_together_and_stay_greedy(monkeypatch, name):
    """A flat cost curve makes two branches (the copy; the head's drafts) as cheap as one, so hybrid
    verifies both in one forward; the kept row's cache must continue exactly as greedy decoding,
    across Gemma 3's sliding window, whichever branch wins."""
    from tests.test_decoding import weak_head

    model, tokenizer = load_model(name)
    ids = torch.tensor([tokenizer("one two three four five six seven eight " * 3).input_ids])
    head = weak_head(model, "cp", horizon=4)
    monkeypatch.setattr(costs, "_costs", {costs.cost_key(model): {n: 100.0 for n in costs.SIZES}})
    reference, _ = generate(model, ids, mode="ar", max_new_tokens=60)
    tokens, stats = generate(model, ids, mode="verify", head=head, max_new_tokens=60, drafter="hybrid")
    assert tokens == reference
    assert stats.tree_steps > 0 and stats.forwards == 1 + len(stats.accepted)
    assert stats.new_tokens == 60 == 1 + sum(a + 1 for a in stats.accepted)


def test_tree_verification_keeps_whichever_branch_the_model_accepts(monkeypatch):
    """Scripted branches: the copy wrong from its first draft and the head right, then the reverse;
    the kept branch, the accepted count and the cache all follow the model."""
    from tjdkit.decoding import verify as verify_module
    from tjdkit.decoding.forward import hidden_and_logits, new_cache
    from tjdkit.decoding.sampling import Sampling

    model, tokenizer = load_model("tiny-gemma3")
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog. " * 2).input_ids])
    reference, _ = generate(model, ids, mode="ar", max_new_tokens=12)
    for right in (0, 1):
        cache = new_cache(model)
        _, logits = hidden_and_logits(model, ids, cache, last_only=True)
        cache.activate_past_recording()
        token = int(logits[-1].argmax())
        assert token == reference[0]
        good = reference[1:5]
        bad = [(t + 1) % model.config.vocab_size for t in reference[1:7]]
        branches = [good, bad] if right == 0 else [bad, good[:3]]
        kept, new, accepted, hidden, both = verify_module._verify_tree(
            model, cache, token, branches, ids, [token], [], Sampling())
        assert kept == right and new == reference[1 : 2 + accepted] and accepted == len(branches[right])
        assert both[1 - right] == 0 and cache.get_seq_length() == ids.shape[1] + 1 + accepted
        follow = torch.tensor([[new[-1]]])
        _, next_logits = hidden_and_logits(model, follow, cache)
        assert int(next_logits[-1].argmax()) == reference[2 + accepted]
