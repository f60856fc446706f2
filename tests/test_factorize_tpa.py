"""Tensor Product Attention conversion checked against independent truth: the original models'
logits, caches and greedy generations, numpy's SVD, and the converted model without a cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from tjdkit.errors import TjdkitError
from tjdkit.factorize import attention_shape
from tjdkit.factorize.tpa import (
    VALIDATION_SHARE,
    TpaAttention,
    auto_tpa_ranks,
    check_tpa_rank,
    convert_layer,
    dense_kv_numbers_per_token,
    head_spectra,
    install_empty,
    kv_numbers_per_token,
    parse_tpa_rank,
)

PRESETS = ["tiny-llama", "tiny-gemma3"]
TEXT = "The capital of France is Paris. The quick brown fox jumps over the lazy dog. Question: what is the answer? "


@pytest.fixture(scope="module")
def pristine():
    """Each tiny preset once. Gemma's q/k norm gains start at 1 + 0; random ones make the fold real."""
    from tjdkit.models import load_model

    models = {}
    for name in PRESETS:
        model, tokenizer = load_model(name)
        model.eval()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in model.model.layers:
                for norm in ("q_norm", "k_norm"):
                    if hasattr(layer.self_attn, norm):
                        weight = getattr(layer.self_attn, norm).weight
                        weight.copy_(0.5 * torch.randn(weight.shape, generator=generator))
        models[name] = (model, tokenizer)
    return models


@pytest.fixture(params=PRESETS)
def preset(request, pristine):
    return pristine[request.param]


def prompt_ids(tokenizer, min_tokens: int = 50):
    ids = tokenizer(TEXT * 3, return_tensors="pt").input_ids
    assert ids.shape[1] >= min_tokens  # longer than tiny-gemma3's sliding window (32)
    return ids


def shape_of(model):
    return attention_shape(model.model.layers[0].self_attn, model.config)


def full_rank(model):
    s = shape_of(model)
    return (s.heads, s.kv_heads, s.kv_heads)


def converted(model, rank, calibration=None, steps=100):
    """A deep copy of `model` with every layer converted; and the reports."""
    model = copy.deepcopy(model)
    reports = [
        convert_layer(layer, model.config, rank, None if calibration is None else calibration[i], steps=steps)
        for i, layer in enumerate(model.model.layers)
    ]
    return model, reports


def attention_inputs(model, ids):
    """{layer: the hidden states its self_attn receives}, from `model` (the original)."""
    captured = {}
    hooks = [
        layer.self_attn.register_forward_pre_hook(
            lambda _m, _a, kwargs, i=i: captured.__setitem__(i, kwargs["hidden_states"].detach()), with_kwargs=True
        )
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return captured


def generate(model, ids, **kwargs):
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=40, pad_token_id=0, **kwargs
        )
    return out[0, ids.shape[1] :].tolist()


# ---- full rank is exact --------------------------------------------------------------------


def test_full_rank_reproduces_logits_and_greedy_generation(preset):
    model, tokenizer = preset
    ids = prompt_ids(tokenizer)
    tpa, reports = converted(model, full_rank(model))
    assert all(isinstance(layer.self_attn, TpaAttention) for layer in tpa.model.layers)
    assert not hasattr(tpa.model.layers[0].self_attn, "q_proj")
    assert all(max(r.errors_init.values()) < 1e-5 for r in reports)
    with torch.no_grad():
        torch.testing.assert_close(tpa(ids).logits, model(ids).logits, atol=1e-4, rtol=0)
    original = generate(model, ids)
    assert generate(tpa, ids) == original  # with the factor KV cache
    assert generate(tpa, ids, use_cache=False) == original


def test_full_rank_with_biases_and_eager_attention(pristine):
    """Biases go into b0 (the appended column of M); the eager path repeats K/V by num_key_value_groups."""
    from transformers import LlamaForCausalLM

    model, tokenizer = pristine["tiny-llama"]
    config = copy.deepcopy(model.config)
    config.attention_bias = True
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        biased = LlamaForCausalLM(config).eval()
        for layer in biased.model.layers:
            for role in "qkv":
                torch.nn.init.normal_(getattr(layer.self_attn, f"{role}_proj").bias, std=0.1)
    biased.set_attn_implementation("eager")
    ids = prompt_ids(tokenizer)
    tpa, _ = converted(biased, full_rank(biased))
    assert tpa.model.layers[0].self_attn.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(tpa(ids).logits, biased(ids).logits, atol=1e-4, rtol=0)
    assert generate(tpa, ids) == generate(biased, ids)


# ---- the cache holds factors -----------------------------------------------------------------


def test_cache_holds_factors_of_the_stated_size(preset):
    model, tokenizer = preset
    ids = prompt_ids(tokenizer)[:, :20]
    s = shape_of(model)
    rank = (2, 1, 1)
    tpa, reports = converted(model, rank)
    with torch.no_grad():
        dense_cache = model(ids, use_cache=True).cache
        factor_cache = tpa(ids, use_cache=True).cache

    def per_token(cache_layer):  # numbers one token adds to one layer's cache
        return cache_layer.keys[0, :, 0].numel() + cache_layer.values[0, :, 0].numel()

    for dense, factors in zip(dense_cache.layers, factor_cache.layers):
        assert factors.keys.shape == (1, 1, 20, rank[1] * (s.heads + s.head_dim))
        assert factors.values.shape == (1, 1, 20, rank[2] * (s.heads + s.head_dim))
        assert per_token(factors) == kv_numbers_per_token(rank, s)
        assert per_token(dense) == dense_kv_numbers_per_token(s)
    assert (reports[0].kv_numbers_before, reports[0].kv_numbers_after) == (
        dense_kv_numbers_per_token(s),
        kv_numbers_per_token(rank, s),
    )
    # Each role: a [R*h, d_model] + [R*h] and b [R*d_h, d_model] + [R*d_h].
    want = sum(r * (s.heads + s.head_dim) * (s.d_model + 1) for r in rank)
    assert reports[0].parameters_after == want == tpa.model.layers[0].self_attn.num_parameters()
    assert reports[0].parameters_before == (s.heads + 2 * s.kv_heads) * s.head_dim * s.d_model  # no biases


# ---- lower rank: SVD initialisation and refinement ------------------------------------------------


def test_initial_error_is_the_svd_tail(pristine):
    model, _ = pristine["tiny-llama"]
    attn = model.model.layers[0].self_attn
    s = attention_shape(attn, model.config)
    heads = attn.q_proj.weight.detach().numpy().reshape(s.heads, s.head_dim * s.d_model)  # no bias
    singular = np.linalg.svd(heads.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(head_spectra(attn, model.config)["q"].numpy(), singular, rtol=1e-5)
    tail = float(np.sqrt((singular[2:] ** 2).sum() / (singular**2).sum()))
    layer = copy.deepcopy(model.model.layers[0])
    report = convert_layer(layer, model.config, (2, 1, 1))  # no calibration: errors are the weights'
    assert report.weight_errors["q"] == pytest.approx(tail, rel=1e-4)
    assert report.errors_init == report.errors_refined == report.weight_errors


def test_refinement_lowers_the_calibration_error(pristine):
    model, tokenizer = pristine["tiny-llama"]
    ids = torch.randint(5, len(tokenizer), (2, 128), generator=torch.Generator().manual_seed(0))
    inputs = attention_inputs(model, ids)
    original = model.model.layers[1].self_attn
    layer = copy.deepcopy(model.model.layers[1])
    report = convert_layer(layer, model.config, (2, 2, 1), calibration_inputs=inputs[1], steps=50, lr=3e-3)
    assert report.errors_refined["q"] < report.errors_init["q"] - 1e-3
    assert report.errors_refined["v"] <= report.errors_init["v"]
    assert report.errors_refined["k"] == report.errors_init["k"] < 1e-5  # full rank: exact, not refined
    assert report.parameters_before == sum(
        getattr(original, f"{role}_proj").weight.numel() for role in "qkv"
    )
    # The reported error is what the installed factors compute, against the original q_proj,
    # on the held-out last quarter of the calibration tokens.
    x = inputs[1].reshape(-1, original.q_proj.in_features)
    x = x[round(x.shape[0] * (1 - VALIDATION_SHARE)):]
    with torch.no_grad():
        want = original.q_proj(x).unflatten(-1, (-1, original.head_dim))
        got = layer.self_attn.tpa_q.product(x)
    error = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))
    assert error == pytest.approx(report.errors_refined["q"], rel=1e-4)


def test_lower_rank_generates_the_same_with_and_without_cache(pristine):
    model, tokenizer = pristine["tiny-gemma3"]
    ids = prompt_ids(tokenizer)
    inputs = attention_inputs(model, ids)
    tpa, _ = converted(model, (2, 1, 1), calibration=inputs, steps=20)
    assert generate(tpa, ids) == generate(tpa, ids, use_cache=False)


def test_cropped_cache_matches_no_cache(preset):
    """Speculative decoding: feed drafts, crop the rejected ones, feed the right tokens."""
    model, tokenizer = preset
    ids = prompt_ids(tokenizer)  # 50+ tokens: past the sliding window
    tpa, _ = converted(model, (2, 1, 1))
    prefix, drafts, right = ids[:, :40], ids[:, 40:48].flip(1), ids[:, 44:48]
    cache = DynamicCache(config=tpa.config)
    cache.activate_past_recording()  # sliding layers keep what crop may need
    with torch.no_grad():
        tpa(prefix, cache=cache, use_cache=True)
        tpa(torch.cat([ids[:, 40:44], drafts[:, :4]], dim=1), cache=cache, use_cache=True)
        cache.crop(-4)  # 4 drafts rejected
        assert cache.get_seq_length() == 44
        with_cache = tpa(right, cache=cache, use_cache=True).logits
        without = tpa(ids[:, :48], use_cache=False).logits[:, 44:]
    torch.testing.assert_close(with_cache, without, atol=1e-5, rtol=0)


# ---- specs, errors and reloading -----------------------------------------------------------------


@pytest.mark.parametrize("spec", ["0,1,1", "-1,1,1", "2,1", "a,b,c", "2,1,1,1", ""])
def test_bad_rank_specs_raise_one_line(spec):
    with pytest.raises(TjdkitError) as raised:
        parse_tpa_rank(spec)
    assert "\n" not in str(raised.value) and "TPA rank" in str(raised.value)


def test_rank_specs_and_limits(pristine):
    assert parse_tpa_rank("auto") == "auto"
    assert parse_tpa_rank(" 2, 1,1 ") == (2, 1, 1)
    gemma = shape_of(pristine["tiny-gemma3"][0])  # 4 query heads, 1 KV head
    with pytest.raises(TjdkitError, match=r"rank 5 for q exceeds the layer's 4 query heads"):
        check_tpa_rank((5, 1, 1), gemma)
    with pytest.raises(TjdkitError, match=r"rank 2 for k exceeds the layer's 1 KV heads"):
        check_tpa_rank((4, 2, 1), gemma)
    with pytest.raises(TjdkitError, match=r"rank for v must be a positive integer"):
        check_tpa_rank((4, 1, 0), gemma)
    assert check_tpa_rank([4, 1, 1], gemma) == (4, 1, 1)


def test_auto_ranks(preset):
    model, _ = preset
    spectra = head_spectra(model.model.layers[0].self_attn, model.config)
    assert auto_tpa_ranks(spectra, 1.0) == full_rank(model)
    squared = spectra["q"].double() ** 2
    kept = float(squared[:2].sum() / squared.sum())  # keeping exactly the top 2 q values
    assert auto_tpa_ranks(spectra, kept - 1e-6)[0] == 2
    with pytest.raises(TjdkitError, match="energy"):
        auto_tpa_ranks(spectra, 0.0)


def test_converting_twice_or_unsupported_raises(pristine):
    model, _ = pristine["tiny-gemma3"]
    layer = copy.deepcopy(model.model.layers[0])
    convert_layer(layer, model.config, (1, 1, 1))
    with pytest.raises(TjdkitError, match="already converted to TPA"):
        convert_layer(layer, model.config, (1, 1, 1))
    with pytest.raises(TjdkitError, match="already converted to TPA"):
        install_empty(layer, model.config, (1, 1, 1))
    layer.self_attn = torch.nn.Linear(4, 4)
    with pytest.raises(TjdkitError, match="unsupported attention Linear"):
        convert_layer(layer, model.config, (1, 1, 1))


def test_empty_then_load_state_dict_reproduces_the_converted_model(pristine):
    model, tokenizer = pristine["tiny-gemma3"]
    ids = prompt_ids(tokenizer)
    inputs = attention_inputs(model, ids)
    tpa = copy.deepcopy(model)
    convert_layer(tpa.model.layers[1], tpa.config, (2, 1, 1), calibration_inputs=inputs[1], steps=10, lr=3e-3)
    assert tpa.model.layers[1].self_attn.tpa_q.a.weight.abs().max() > 0  # refined: contextual A
    keys = tpa.state_dict().keys()
    assert {"model.layers.1.self_attn.o_proj.weight", "model.layers.1.self_attn.k_norm.weight"} <= set(keys)
    assert not any(key.startswith("model.layers.1.self_attn.q_proj") for key in keys)

    reloaded = copy.deepcopy(model)
    empty = install_empty(reloaded.model.layers[1], reloaded.config, (2, 1, 1))
    assert empty.rank == (2, 1, 1) and empty.tpa_k.a.bias.abs().max() == 0
    reloaded.load_state_dict(tpa.state_dict())  # strict
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, tpa(ids).logits, atol=0, rtol=0)


def test_keeps_dtype_and_runs_in_bfloat16(pristine):
    model, tokenizer = pristine["tiny-gemma3"]
    ids = prompt_ids(tokenizer)
    half = copy.deepcopy(model).to(torch.bfloat16)
    inputs = attention_inputs(half, ids)
    report = convert_layer(half.model.layers[0], half.config, (2, 1, 1), calibration_inputs=inputs[0], steps=5)
    attn = half.model.layers[0].self_attn
    assert {p.dtype for p in attn.parameters()} == {torch.bfloat16}
    assert report.errors_refined["q"] <= report.errors_init["q"]
    with torch.no_grad():
        assert torch.isfinite(half(ids).logits).all()
