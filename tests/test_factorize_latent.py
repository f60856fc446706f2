"""The latent KV attention checked against independent truth: the original model's logits at full
width, the same model without a cache, greedy generation, and the pair/score and SVD rules."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache

from tjdkit.errors import TjdkitError
from tjdkit.factorize.latent import (
    LatentKVAttention,
    auto_latent_rank,
    check_latent_rank,
    convert_latent_layer,
    latent_kv_numbers_per_token,
)
from tjdkit.factorize.tucker import attention_shape

PRESETS = ["tiny-llama", "tiny-gemma3"]
TEXT = "The capital of France is Paris. The quick brown fox jumps over the lazy dog. Question: what is the answer? "


@pytest.fixture(scope="module")
def pristine():
    from tjdkit.models import load_model

    models = {}
    for name in PRESETS:
        model, tokenizer = load_model(name)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # random q/k norm gains, so the norms' place before RoPE matters
            for layer in model.model.layers:
                for norm in ("q_norm", "k_norm"):
                    if hasattr(layer.self_attn, norm):
                        getattr(layer.self_attn, norm).weight.copy_(0.5 * torch.randn(getattr(layer.self_attn, norm).weight.shape, generator=generator))
        models[name] = (model.eval(), tokenizer)
    return models


@pytest.fixture(params=PRESETS)
def preset(request, pristine):
    return pristine[request.param]


def ids_of(tokenizer):
    ids = tokenizer(TEXT * 3, return_tensors="pt").input_ids
    assert ids.shape[1] > 40  # past tiny-gemma3's sliding window (32)
    return ids


def shape_of(model):
    return attention_shape(model.model.layers[0].self_attn, model.config)


def converted(model, rank, calibration=False, ids=None):
    model = copy.deepcopy(model)
    inputs = {}
    if calibration:
        from tjdkit.factorize.convert import _attention_inputs

        inputs = _attention_inputs(model, model.model.layers, range(len(model.model.layers)), ids)
    reports = [convert_latent_layer(layer, model.config, rank, inputs.get(i)) for i, layer in enumerate(model.model.layers)]
    return model, reports


def full_width(model):
    s = shape_of(model)
    return (s.head_dim, s.kv_heads * s.head_dim)


def test_full_width_reproduces_the_model(preset):
    model, tokenizer = preset
    ids = ids_of(tokenizer)
    with torch.no_grad():
        reference = model(ids).logits
    latent, reports = converted(model, full_width(model))
    assert all(isinstance(layer.self_attn, LatentKVAttention) for layer in latent.model.layers)
    assert all(r.key_share == pytest.approx(1.0) and r.value_error < 1e-5 for r in reports)
    with torch.no_grad():
        torch.testing.assert_close(latent(ids).logits, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("calibration", [False, True])
def test_cached_decoding_equals_the_no_cache_forward(preset, calibration):
    model, tokenizer = preset
    ids = ids_of(tokenizer)
    s = shape_of(model)
    latent, _ = converted(model, (s.head_dim // 2, max(1, s.kv_heads * s.head_dim // 4)), calibration, ids)
    with torch.no_grad():
        full = latent(ids, use_cache=False).logits
        cache = DynamicCache(config=latent.config)
        split = ids.shape[1] - 6
        first = latent(ids[:, :split], cache=cache, use_cache=True).logits
        steps = [latent(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(split, ids.shape[1])]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, rtol=1e-4, atol=1e-4)
    widths = {layer.keys.shape[-1] for layer in cache.layers} | {layer.values.shape[-1] for layer in cache.layers}
    assert widths == {s.head_dim // 2, max(1, s.kv_heads * s.head_dim // 4)}  # the cache holds the small widths


def test_the_cache_survives_crop_and_rollback(pristine):
    model, tokenizer = pristine["tiny-llama"]
    ids = ids_of(tokenizer)[:, :30]
    latent, _ = converted(model, (8, 16))
    with torch.no_grad():
        full = latent(ids, use_cache=False).logits
        cache = DynamicCache(config=latent.config)
        latent(ids[:, :20], cache=cache, use_cache=True)
        latent(torch.tensor([[7, 8, 9]]), cache=cache, use_cache=True)  # a rejected draft
        cache.crop(-3)  # drop the rejected draft
        rest = latent(ids[:, 20:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(rest, full[:, 20:], rtol=1e-4, atol=1e-4)


def test_greedy_generation_with_the_cache_equals_generation_without(preset):
    model, tokenizer = preset
    ids = ids_of(tokenizer)[:, :12]
    latent, _ = converted(model, auto_latent_rank(shape_of(model)))
    with torch.no_grad():
        cached = latent.generate(ids, max_new_tokens=10, do_sample=False)
        uncached = latent.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_kept_pairs_carry_the_largest_scores_and_keys_stay_exact_on_them(pristine):
    model, tokenizer = pristine["tiny-gemma3"]
    ids = ids_of(tokenizer)
    s = shape_of(model)
    latent, reports = converted(model, (s.head_dim // 2, s.kv_heads * s.head_dim), True, ids)
    attn = latent.model.layers[0].self_attn
    kept = attn.kept_pairs
    assert kept.numel() == s.head_dim // 4 and torch.equal(kept, kept.sort().values)
    assert 0.5 < reports[0].key_share < 1.0
    # With the whole value kept, dropping key pairs changes only the scores: the original
    # attention's keys restricted to the kept dims equal the latent layer's keys.
    original = model.model.layers[0].self_attn
    x = torch.randn(1, 5, s.d_model)
    position = torch.arange(5)[None]
    layer_type = getattr(original, "layer_type", None)
    cos_sin = model.model.rotary_emb(x, position, layer_type) if layer_type else model.model.rotary_emb(x, position)
    _, keys = attn._queries_keys(x, cos_sin)
    k = original.k_proj(x).view(1, 5, -1, s.head_dim).transpose(1, 2)
    if getattr(original, "k_norm", None) is not None:
        k = original.k_norm(k)
    cos, sin = cos_sin
    half = s.head_dim // 2
    rotated = k * cos[:, None] + torch.cat((-k[..., half:], k[..., :half]), -1) * sin[:, None]
    torch.testing.assert_close(keys, rotated[..., attn.key_dims])


def test_rank_checks_and_cache_size():
    from types import SimpleNamespace

    s = SimpleNamespace(head_dim=256, kv_heads=1, heads=4, d_model=640)
    assert auto_latent_rank(s) == (128, 128)
    assert latent_kv_numbers_per_token((128, 128), s) == 256
    assert check_latent_rank((64, 32), s) == (64, 32)
    for rank, message in [((3, 8), "must be even"), ((512, 8), "between 2 and"), ((64, 0), "between 1 and"), ((64,), "expected 2")]:
        with pytest.raises(TjdkitError, match=message):
            check_latent_rank(rank, s)


def test_a_layer_cannot_be_converted_twice(pristine):
    model, _ = pristine["tiny-llama"]
    latent, _ = converted(model, (8, 8))
    with pytest.raises(TjdkitError, match="already converted"):
        convert_latent_layer(latent.model.layers[0], latent.config, (8, 8))
