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


def pinned(model, table: costs.ForwardCosts) -> dict:
    """The process's curves with `table` for the model, whether a step reads logits or only argmaxes."""
    return {costs.cost_key(model, argmax_only): table for argmax_only in (False, True)}


def flat(ms: float = 100.0) -> costs.ForwardCosts:
    """Every size costs the same (a GPU-like curve)."""
    return costs.ForwardCosts({n: ms for n in costs.SIZES}, {n: ms / 100 for n in costs.SIZES})


def steep(ms_per_token: float = 100.0) -> costs.ForwardCosts:
    """Every token and every output row adds the same time (a steep CPU-like curve)."""
    return costs.ForwardCosts({n: ms_per_token * n for n in costs.SIZES}, {n: ms_per_token * n for n in costs.SIZES})


def random_costs(rng) -> costs.ForwardCosts:
    parts = []
    for _ in range(2):
        total, curve = 0.0, {}
        for n in costs.SIZES:
            total += rng.uniform(0.1, 20.0)
            curve[n] = total
        parts.append(curve)
    return costs.ForwardCosts(*parts)


def test_interpolate_is_linear_between_sizes_and_extends_the_last_slope():
    curve = {1: 10.0, 2: 12.0, 4: 20.0, 8: 20.0}
    assert costs.interpolate(curve, 2) == 12.0 and costs.interpolate(curve, 3) == 16.0 and costs.interpolate(curve, 6) == 20.0
    assert costs.interpolate({1: 10.0, 4: 16.0}, 7) == 22.0 and costs.interpolate(curve, 0) == 10.0
    table = steep(3.0)
    assert [table.layers_ms(n) for n in (1, 5, 40, 70)] == [3.0, 15.0, 120.0, 210.0]


def test_a_noisy_measurement_is_made_non_decreasing():
    assert costs._non_decreasing({1: 75.0, 2: 896.0, 4: 262.0, 8: 369.0, 16: 300.0}) == {
        1: 75.0, 2: 262.0, 4: 262.0, 8: 300.0, 16: 300.0}


def test_expected_step_time_is_the_brute_force_over_acceptance_outcomes():
    """Enumerate how many drafts hold (m = 0..k, with the profile's chances); each outcome reads rows
    0..m and runs every chunk that starts at or before row m."""
    rng = random.Random(0)
    for _ in range(100):
        table = random_costs(rng)
        rates = [rng.random() for _ in range(40)]
        reach = [1.0]
        for rate in rates:
            reach.append(reach[-1] * rate)
        k, first = rng.randint(1, 31), rng.choice([1, 2, 3, 4, 8, 32])
        chances = [reach[m] * (1 - rates[m] if m < k else 1.0) for m in range(k + 1)]  # exactly m drafts held
        assert sum(chances) == pytest.approx(1.0)
        brute = sum(chance * sum(table.output_ms(size) for start, size in costs.output_chunks(1 + k, first) if start <= m)
                    for m, chance in enumerate(chances))
        assert costs.expected_output_ms(table, reach, 1 + k, first) == pytest.approx(brute)
        tokens = sum(chance * (m + 1) for m, chance in enumerate(chances))
        assert costs.expected_tokens(reach, k) == pytest.approx(tokens)


def test_output_chunks_cover_the_rows_and_double():
    assert costs.output_chunks(13, 2) == [(0, 2), (2, 4), (6, 7)]
    assert costs.output_chunks(4, 8) == [(0, 4)] and costs.output_chunks(1, 1) == [(0, 1)]


def test_best_draft_length_and_first_chunk_are_the_brute_force_argmax():
    rng = random.Random(1)
    for _ in range(100):
        table = random_costs(rng)
        reach = list(costs.constant_reach(rng.random()))
        limit = rng.randint(1, 31)

        def ms(k):
            return table.layers_ms(1 + k) + min(costs.expected_output_ms(table, reach, 1 + k, width)
                                                for width in range(1, 2 + k))  # any first width
        best = costs.best_draft_length(table, reach, limit)
        rates = {k: costs.expected_tokens(reach, k) / ms(k) for k in range(1, limit + 1)}
        # the chunk widths tried are powers of two: within a few percent of the best over every width
        assert rates[best] >= 0.9 * max(rates.values())
        width = costs.best_first_chunk(table, reach, 1 + limit)
        assert costs.expected_output_ms(table, reach, 1 + limit, width) == pytest.approx(min(
            costs.expected_output_ms(table, reach, 1 + limit, w) for w in (*costs.CHUNK_WIDTHS, 1 + limit) if w <= 1 + limit))
    assert costs.best_draft_length(table, reach, 0) == 0


def test_a_flat_cost_and_sure_drafts_go_long_a_steep_cost_goes_short():
    sure, unsure = list(costs.constant_reach(0.95)), list(costs.constant_reach(0.3))
    assert costs.best_draft_length(flat(), sure, 31) == 31
    assert costs.best_draft_length(steep(), sure, 31) == 1
    # the measured fp16-weights curves of Gemma 3 270M on a 2-core AVX2 CPU: the lazy output layer makes
    # long copies pay when they hold, short ones when they do not
    gemma = costs.ForwardCosts({1: 34, 2: 38, 4: 39, 8: 51, 12: 62, 16: 73, 24: 86, 32: 100},
                               {1: 18, 2: 19, 4: 22, 8: 46, 12: 57, 16: 68, 24: 108, 32: 148})
    assert costs.best_draft_length(gemma, sure, 31) >= 16 and costs.best_draft_length(gemma, unsure, 31) <= 4
    assert costs.best_first_chunk(gemma, unsure, 32) <= 2 and costs.best_first_chunk(gemma, sure, 32) >= 8


def test_acceptance_profile_counts_each_position_and_leans_on_the_one_before():
    profile = costs.AcceptanceProfile(prior=0.5, weight=2)
    profile.update(3, 5)  # positions 0..2 accepted, position 3 tried and rejected
    profile.update(2, 2)  # all accepted: nothing rejected
    profile.update(0, 4)  # position 0 rejected
    rates = profile.rates()
    assert rates[0] == pytest.approx((2 + 2 * 0.5) / (3 + 2))
    assert rates[1] == pytest.approx((2 + 2 * rates[0]) / (2 + 2))
    assert rates[3] == pytest.approx((0 + 2 * rates[2]) / (1 + 2))
    assert rates[10] == pytest.approx(rates[4])  # never tried: the last position with tries carries on
    assert profile.reach[:3] == pytest.approx([1.0, rates[0], rates[0] * rates[1]]) and profile.rate == rates[0]


def test_lazy_logits_compute_only_the_rows_read_and_equal_the_output_layer():
    from tjdkit.decoding.forward import LazyLogits, output_logits

    model, _ = load_model("tiny-gemma3")
    hidden = torch.randn(11, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    full = output_logits(model, hidden)
    lazy = LazyLogits(model, hidden, first=2)
    assert torch.allclose(lazy[0], full[0], atol=1e-5) and lazy.computed == 2
    assert torch.allclose(lazy[1], full[1], atol=1e-5) and lazy.computed == 2  # computed with row 0
    assert torch.allclose(lazy[2], full[2], atol=1e-5) and lazy.computed == 6  # then 4 more
    assert torch.allclose(lazy[-1], full[-1], atol=1e-5) and lazy.computed == 7  # a jump (a tree's other branch)
    assert all(torch.allclose(lazy[j], full[j], atol=1e-5) for j in range(11)) and len(lazy) == 11
    assert lazy.computed == 11  # rows 6..9 in one chunk that stops before row 10: no row twice
    with pytest.raises(IndexError):
        lazy[11]


def test_the_curve_is_measured_once_per_machine_and_model(monkeypatch):
    from tjdkit.models.quantize import weights_copy

    model, _ = load_model("tiny-llama")
    table = costs.forward_costs(model)
    for curve in (table.layers, table.output):
        assert set(curve) == set(costs.SIZES) and all(ms > 0 for ms in curve.values())
        assert list(curve.values()) == sorted(curve.values())
    monkeypatch.setattr(costs, "_costs", {})  # a new process: the cache file answers
    monkeypatch.setattr(costs, "measure_forward_costs", lambda model, **_: pytest.fail("measured again"))
    assert costs.forward_costs(model) == table
    monkeypatch.undo()
    fast = weights_copy(model, "fp16-weights")  # another weight format is another curve
    assert costs.cost_key(fast) != costs.cost_key(model) and set(costs.forward_costs(fast).layers) == set(costs.SIZES)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_verify_takes_the_length_the_costs_pay_for_and_stays_lossless(monkeypatch, name):
    model, tokenizer = load_model(name)
    ids = torch.tensor([tokenizer("one two three four five six seven eight " * 4).input_ids])
    reference, _ = generate(model, ids, mode="ar", max_new_tokens=48)
    longest = {}
    for shape, table in (("flat", flat()), ("steep", steep())):
        monkeypatch.setattr(costs, "_costs", pinned(model, table))
        tokens, stats = generate(model, ids, mode="verify", max_new_tokens=48, drafter="lookup")
        assert tokens == reference, shape  # across Gemma 3's sliding window (tiny-gemma3: 32 tokens)
        longest[shape] = max(itertools.chain(stats.offered, [0]))
    assert longest["steep"] <= 1 and (longest["flat"] > 10 or longest["flat"] == 0)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
def test_tree_steps_verify_the_copy_and_the_head_together_and_stay_greedy(monkeypatch, name):
    """A flat cost curve makes several branches (the copy; the head's drafts and its next-best first
    drafts) as cheap as one, so hybrid verifies them as one token tree; the compacted cache must
    continue exactly as greedy decoding, across Gemma 3's sliding window, whichever branch wins."""
    from tests.test_decoding import weak_head

    model, tokenizer = load_model(name)
    ids = torch.tensor([tokenizer("one two three four five six seven eight " * 3).input_ids])
    head = weak_head(model, "cp", horizon=4)
    monkeypatch.setattr(costs, "_costs", pinned(model, flat()))
    reference, _ = generate(model, ids, mode="ar", max_new_tokens=60)
    tokens, stats = generate(model, ids, mode="verify", head=head, max_new_tokens=60, drafter="hybrid")
    assert tokens == reference
    assert stats.tree_steps > 0 and stats.forwards == 1 + len(stats.accepted)
    assert stats.new_tokens == 60 == 1 + sum(a + 1 for a in stats.accepted)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
def test_the_heads_next_best_drafts_join_the_tree_and_stay_greedy(monkeypatch, name):
    """With flat costs, a wider forward is nearly free, so a confident head's next-best first drafts (each
    continued by the head) join as branches; greedy output stays the model's. A head whose second
    position is flat (every next-best has probability ~1/V) is worth no extra branch at any cost."""
    from tests.test_decoding import weak_head

    model, tokenizer = load_model(name)
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog.").input_ids])
    monkeypatch.setattr(costs, "_costs", pinned(model, flat()))
    reference, _ = generate(model, ids, mode="ar", max_new_tokens=48)
    flat_head = weak_head(model, "cp", horizon=4)
    tokens, stats = generate(model, ids, mode="verify", head=flat_head, max_new_tokens=48, drafter="head")
    assert tokens == reference and stats.tree_steps == 0
    confident = weak_head(model, "cp", horizon=4)
    with torch.no_grad():
        confident.decoder.weight.mul_(30)  # sharper conditionals: its next-best tokens carry real probability
    tokens, stats = generate(model, ids, mode="verify", head=confident, max_new_tokens=48, drafter="head")
    assert tokens == reference and stats.tree_steps > 0 and stats.lookup_steps == 0
    assert stats.new_tokens == 48 == 1 + sum(a + 1 for a in stats.accepted)


def test_plan_adds_alternatives_only_where_the_costs_pay_for_them():
    from tjdkit.decoding.verify import _plan

    reach = [1.0, 0.3, 0.2, 0.1]
    alternatives = [0.15, 0.1, 0.05, 0.02]
    assert _plan(flat(), [], 3, reach, reach, alternatives, True) == ("head", 4)  # width is free: all of them
    assert _plan(steep(), [], 3, reach, reach, alternatives, True)[1] == 0  # each node costs: none
    assert _plan(flat(), [], 3, reach, reach, alternatives, False) == ("head", 0)  # no tree (sampling)
    assert _plan(None, [], 3, reach, reach, alternatives, False) == ("head", 0)
    assert _plan(flat(), [], 0, reach, reach, alternatives, True) == ("none", 0)
    copy, sure = [5, 6, 7], [1.0, 0.99, 0.99, 0.99]  # a copy that always holds beats the head...
    assert _plan(flat(), copy, 3, sure, reach, alternatives, True)[0] == "lookup"
    for kind in ("head", "tree"):  # ...but a kind already chosen is widened within that kind
        assert _plan(flat(), copy, 3, sure, reach, alternatives, True, kind=kind) == (kind, 4)


def test_the_hybrid_plan_takes_a_plain_step_where_the_heads_drafting_does_not_pay():
    """A forward of 4 tokens costs what one of 1 does (flat), but drafting costs 20 ms: a head whose first
    draft holds 5% of the time loses to a plain step, one that holds 90% wins; only the hybrid drafter
    may skip drafting ("head" drafts as asked)."""
    from tjdkit.decoding.verify import _plan

    weak, strong = [1.0, 0.05, 0.01, 0.0], [1.0, 0.9, 0.8, 0.7]
    assert _plan(flat(), [], 3, weak, weak, [], False, 20.0, plain_ok=True) == ("none", 0)
    assert _plan(flat(), [], 3, strong, strong, [], False, 20.0, plain_ok=True) == ("head", 0)
    assert _plan(flat(), [], 3, weak, weak, [], False, 20.0) == ("head", 0)
    assert _plan(flat(), [], 3, weak, weak, [], False, 0.0, plain_ok=True) == ("head", 0)  # free drafting: any chance pays


def test_hybrid_verify_with_a_useless_head_takes_plain_steps_and_stays_greedy(monkeypatch):
    """A head whose drafts never hold (an untrained one, on text without repeats for lookup): hybrid stops
    paying for it once its measured acceptance says so, and the output is still greedy decoding's."""
    from tests.test_decoding import weak_head

    model, tokenizer = load_model("tiny-llama")
    ids = torch.tensor([tokenizer("The quick brown fox jumps over the lazy dog.").input_ids])
    monkeypatch.setattr(costs, "_costs", pinned(model, steep()))
    reference, _ = generate(model, ids, mode="ar", max_new_tokens=40)
    tokens, stats = generate(model, ids, mode="verify", head=weak_head(model, "cp", horizon=4), max_new_tokens=40,
                             drafter="hybrid")
    assert tokens == reference
    assert stats.offered.count(0) > len(stats.offered) // 2  # mostly plain steps: no drafts offered
