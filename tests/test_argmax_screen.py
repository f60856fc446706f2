"""The int8 argmax screen against the truth it stands in for: torch's argmax over the layer's full
logits (first index on a tie), on random layers, peaked and flat rows, ties, both weight formats,
and greedy decoding with and without it."""

import pytest
import torch

from tjdkit.decoding import generate
from tjdkit.kernels import argmax as screen_module
from tjdkit.kernels import output_layer
from tjdkit.kernels.argmax import ArgmaxScreen, greedy_tokens, screen_for, uses_screen
from tjdkit.models import load_model
from tjdkit.models.quantize import fp16_linear, weights_copy

needs_onednn = pytest.mark.skipif(not screen_module.available(), reason="torch has no oneDNN int8 GEMM here")


def random_layer(vocab=3000, width=96, bias=False, seed=0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(width, vocab, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(vocab, 1) * 4)  # rows of different scales, as in an embedding
    return layer


def truth(layer, hidden) -> list[int]:
    with torch.no_grad():
        return layer(hidden).argmax(dim=-1).tolist()


@pytest.fixture
def unchosen(monkeypatch, tmp_path) -> torch.nn.Linear:
    """A large enough layer, no choice made for it yet in this process or the (empty) cache."""
    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path))
    monkeypatch.delenv("TJDKIT_ARGMAX", raising=False)
    monkeypatch.setattr(screen_module, "_chosen", {})
    return random_layer(vocab=8192, width=64)


def rows(layer, count=24, seed=1) -> torch.Tensor:
    """Peaked rows (a token's own weight row, scaled), flat rows (noise) and their mixtures."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(layer.out_features, (count,), generator=generator)
    own = layer.weight.detach()[picks] * torch.rand(count, 1, generator=generator) * 30
    noise = torch.randn(count, layer.in_features, generator=generator) * torch.rand(count, 1, generator=generator) * 5
    return own + noise


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_the_screened_argmax_is_the_full_argmax(bias):
    layer = random_layer(bias=bias)
    hidden = rows(layer)
    assert ArgmaxScreen(layer.weight, layer.bias).argmax(hidden, layer) == truth(layer, hidden)


@needs_onednn
def test_every_exact_logit_lies_within_its_bound():
    """The screen's inequality itself, token by token: |exact - int8 score| <= the bound it uses."""
    layer = random_layer(vocab=2000)
    screen = ArgmaxScreen(layer.weight)
    hidden = rows(layer, count=8)
    scores, unit, missed, seen = screen.scores(hidden)
    exact = truth_logits = layer(hidden).detach()
    reach = missed + screen_module.ROUNDING * hidden.norm(dim=1)
    bound = screen.row_norm[None] * reach[:, None] + screen.error_norm[None] * seen[:, None]
    assert ((exact - scores * unit).abs() <= bound).all()
    assert (bound < truth_logits.std(dim=1, keepdim=True)).all()  # and tight enough to screen anything


@needs_onednn
def test_ties_go_to_the_first_token_as_in_torch():
    layer = random_layer(vocab=1000)
    with torch.no_grad():
        layer.weight[700] = layer.weight[300]  # two tokens with the same logit everywhere
        layer.weight[900] = layer.weight[300]
    hidden = layer.weight.detach()[[300, 700, 900]] * 20
    assert ArgmaxScreen(layer.weight).argmax(hidden, layer) == [300, 300, 300] == truth(layer, hidden)


@needs_onednn
def test_a_flat_row_and_a_zero_row_are_computed_whole():
    layer = random_layer(vocab=1000)
    hidden = torch.stack([torch.zeros(96), torch.full((96,), 1e-4)])
    assert ArgmaxScreen(layer.weight).argmax(hidden, layer) == truth(layer, hidden)


@needs_onednn
def test_fp16_weights_are_screened_against_their_own_logits():
    layer = random_layer()
    fast = fp16_linear(layer)
    hidden = rows(layer)
    with torch.no_grad():
        expected = fast(hidden).argmax(dim=-1).tolist()
    assert screen_for(fast).argmax(hidden, fast) == expected
    assert screen_for(fast).exact.dtype == torch.float16


@needs_onednn
def test_a_cpu_whose_int8_gemm_saturates_gets_the_seven_bit_halves(monkeypatch):
    layer = random_layer()
    screen = ArgmaxScreen(layer.weight)
    hidden = rows(layer)
    signed = screen.scores(hidden)[0]
    screen.signed_ok = False
    assert torch.allclose(screen.scores(hidden)[0], signed, rtol=1e-5, atol=1e-3)
    assert screen.argmax(hidden, layer) == truth(layer, hidden)


@needs_onednn
def test_a_weight_changed_in_place_rebuilds_the_screen():
    layer = random_layer(vocab=500)
    hidden = rows(layer, count=4)
    before = screen_for(layer)
    with torch.no_grad():
        layer.weight.mul_(-1)
    assert screen_for(layer) is not before
    assert screen_for(layer).argmax(hidden, layer) == truth(layer, hidden)


@needs_onednn
def test_the_environment_forces_either_path(monkeypatch):
    layer = random_layer()
    hidden = rows(layer, count=2)
    monkeypatch.setenv("TJDKIT_ARGMAX", "full")
    assert not uses_screen(layer, hidden.device) and greedy_tokens(layer, hidden) == truth(layer, hidden)
    monkeypatch.setenv("TJDKIT_ARGMAX", "screen")
    assert uses_screen(layer, hidden.device) and greedy_tokens(layer, hidden) == truth(layer, hidden)
    assert not uses_screen(layer.to(torch.bfloat16), hidden.device)  # a format it cannot screen


@needs_onednn
def test_the_choice_is_measured_once_per_machine(monkeypatch, unchosen):
    layer = unchosen
    choice = screen_module.choose(layer)
    assert choice in screen_module.CHOICES
    monkeypatch.setattr(screen_module, "_chosen", {})  # a new process: the cache file answers
    monkeypatch.setattr(screen_module, "measure", lambda *_: pytest.fail("measured again"))
    assert screen_module.choose(layer) == choice == screen_module.chosen(layer)


@needs_onednn
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("weights", ["float32", "fp16-weights"])
def test_greedy_decoding_through_the_screen_is_unchanged(monkeypatch, name, weights):
    """ar and verify (lookup drafts: trees, rollback, Gemma 3's sliding window) with the screen
    forced give the tokens of ar over full logits."""
    model, tokenizer = load_model(name)
    if weights != "float32":
        model = weights_copy(model, weights)
    ids = torch.tensor([tokenizer("one two three four five six seven eight " * 4).input_ids])
    monkeypatch.setenv("TJDKIT_ARGMAX", "full")
    reference, _ = generate(model, ids, mode="ar", max_new_tokens=40)
    monkeypatch.setenv("TJDKIT_ARGMAX", "screen")
    screened, _ = generate(model, ids, mode="ar", max_new_tokens=40)
    verified, _ = generate(model, ids, mode="verify", drafter="lookup", max_new_tokens=40)
    assert screened == reference == verified
    layer = model.get_output_embeddings()
    hidden = torch.randn(5, layer.in_features) * 10
    with torch.no_grad():
        assert greedy_tokens(layer, hidden) == output_layer(layer, hidden).argmax(dim=-1).tolist()


@needs_onednn
def test_greedy_cost_curves_are_measured_through_the_screen_and_kept_apart(monkeypatch):
    from tjdkit.decoding import costs

    model, _ = load_model("tiny-llama")
    monkeypatch.setattr(costs, "_costs", {})
    monkeypatch.setenv("TJDKIT_ARGMAX", "full")
    assert costs.cost_key(model, True) == costs.cost_key(model)  # no screen: one curve serves both
    monkeypatch.setenv("TJDKIT_ARGMAX", "screen")
    assert costs.cost_key(model, True) == costs.cost_key(model) + "|argmax"
    calls = []
    real = screen_module.ArgmaxScreen.argmax
    monkeypatch.setattr(screen_module.ArgmaxScreen, "argmax", lambda self, *a: calls.append(1) or real(self, *a))
    table = costs.measure_forward_costs(model, repeats=1, argmax_only=True)
    assert calls and set(table.output) == set(costs.SIZES) and all(ms > 0 for ms in table.output.values())


def test_a_torch_without_onednn_int8_decodes_through_the_full_layer(monkeypatch, tmp_path):
    """What `available` answers when the op is missing, and what greedy decoding does then."""
    def missing():
        raise AttributeError("'_OpNamespace' 'onednn' object has no attribute 'qlinear_prepack'")

    monkeypatch.setattr(screen_module, "_signed_activations_exact", missing)
    assert screen_module.available.__wrapped__() is False
    monkeypatch.setattr(screen_module, "available", lambda: False)
    monkeypatch.setattr(screen_module, "_chosen", {})
    monkeypatch.setenv("TJDKIT_ARGMAX", "screen")
    layer = random_layer(vocab=8192, width=64)
    hidden = rows(layer, count=3)
    assert not uses_screen(layer, hidden.device) and greedy_tokens(layer, hidden) == truth(layer, hidden)
    monkeypatch.delenv("TJDKIT_ARGMAX")
    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path))
    assert screen_module.choose(layer) == "full" and not uses_screen(layer, hidden.device)


@needs_onednn
def test_a_screen_measured_slower_is_not_kept(monkeypatch, unchosen):
    layer = unchosen
    monkeypatch.setattr(screen_module, "measure", lambda layer: screen_for(layer) and {"screen": 2.0, "full": 1.0})
    assert screen_module.choose(layer) == "full" and layer not in screen_module._screens
