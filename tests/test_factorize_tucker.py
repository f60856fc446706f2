"""Shared-factor Tucker of attention checked against independent truth: the models' own
nn.Linear projections and logits, numpy's SVD, and the energy formula written out by hand."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from tjdkit.errors import TjdkitError
from tjdkit.factorize import (
    FactorizedAttentionProjections,
    TuckerProjection,
    attention_shape,
    attention_tensor,
    auto_ranks,
    check_rank,
    dense_num_parameters,
    install_factorized,
    materialize,
    mode_spectra,
    parse_layers,
    parse_rank,
    tucker_layer,
)

PRESETS = ["tiny-llama", "tiny-gemma3"]
PROMPT = "The capital of France is Paris. Question: what is the answer?"


@pytest.fixture(scope="module")
def pristine():
    """Each tiny preset loaded once; tests work on deep copies."""
    from tjdkit.models import load_model

    return {name: load_model(name) for name in PRESETS}


@pytest.fixture(params=PRESETS)
def preset(request, pristine):
    """(model copy, tokenizer) for one preset."""
    model, tokenizer = pristine[request.param]
    return copy.deepcopy(model), tokenizer


def logits(model, tokenizer):
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def attentions(model):
    return [layer.self_attn for layer in model.model.layers]


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# ---- the tensor --------------------------------------------------------------------------


def test_presets_exercise_grouped_and_multi_query_heads(pristine):
    llama, gemma = pristine["tiny-llama"][0].config, pristine["tiny-gemma3"][0].config
    assert (llama.num_attention_heads, llama.num_key_value_heads) == (4, 2)  # GQA, group of 2
    assert (gemma.num_attention_heads, gemma.num_key_value_heads) == (4, 1)  # MQA
    shape = attention_shape(attentions(pristine["tiny-gemma3"][0])[0], gemma)
    assert (shape.d_model, shape.head_dim, shape.heads, shape.kv_heads, shape.group) == (64, 16, 4, 1, 4)


def test_tensor_slices_are_the_per_head_projections(preset):
    """q_i = x @ W[:, :, 0, i] and the layer output = sum_i W[:, :, 3, i] @ attn_i, per the nn.Linears."""
    model, _ = preset
    attn = attentions(model)[0]
    s = attention_shape(attn, model.config)
    W = attention_tensor(attn, model.config)
    assert W.shape == (s.d_model, s.head_dim, 4, s.heads) and W.dtype == torch.float32
    torch.manual_seed(0)
    x = torch.randn(3, s.d_model)
    with torch.no_grad():
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        for i in range(s.heads):
            j = i // s.group  # the KV head query head i reads
            torch.testing.assert_close(x @ W[:, :, 0, i], q[:, i * s.head_dim : (i + 1) * s.head_dim])
            torch.testing.assert_close(x @ W[:, :, 1, i], k[:, j * s.head_dim : (j + 1) * s.head_dim])
            torch.testing.assert_close(x @ W[:, :, 2, i], v[:, j * s.head_dim : (j + 1) * s.head_dim])
        a = torch.randn(3, s.heads * s.head_dim)
        by_heads = sum(a[:, i * s.head_dim : (i + 1) * s.head_dim] @ W[:, :, 3, i].T for i in range(s.heads))
        torch.testing.assert_close(by_heads, attn.o_proj(a))


# ---- full rank is exact --------------------------------------------------------------------


def test_full_rank_reproduces_weights_and_logits(preset):
    model, tokenizer = preset
    before = logits(model, tokenizer)
    originals = [{n: getattr(a, f"{n}_proj").weight.detach().clone() for n in "qkvo"} for a in attentions(model)]
    for attn in attentions(model):
        W = attention_tensor(attn, model.config)
        tucker = tucker_layer(W, W.shape[:3])
        assert tucker.ranks == tuple(W.shape[:3])
        assert tucker.relative_error(W) < 1e-5
        materialize(attn, model.config, tucker.reconstruct())
    for attn, original in zip(attentions(model), originals):
        for n, weight in original.items():
            assert rel(getattr(attn, f"{n}_proj").weight.detach(), weight) < 1e-5
    torch.testing.assert_close(logits(model, tokenizer), before, rtol=1e-4, atol=1e-4)


def test_full_rank_factorized_modules_keep_the_logits(preset):
    model, tokenizer = preset
    before = logits(model, tokenizer)
    for attn in attentions(model):
        W = attention_tensor(attn, model.config)
        install_factorized(attn, model.config, tucker_layer(W, W.shape[:3]))
    torch.testing.assert_close(logits(model, tokenizer), before, rtol=1e-4, atol=1e-4)


# ---- sharing ---------------------------------------------------------------------------------


def test_one_factor_per_shared_mode_and_one_core_per_head(pristine):
    model = pristine["tiny-gemma3"][0]
    W = attention_tensor(attentions(model)[0], model.config)
    tucker = tucker_layer(W, (12, 6, 3))
    assert tucker.u_dmodel.shape == (64, 12) and tucker.u_headdim.shape == (16, 6) and tucker.u_role.shape == (4, 3)
    assert tucker.core.shape == (12, 6, 3, 4)  # the heads mode is not decomposed: one core per head
    assert tucker.num_parameters() == 64 * 12 + 16 * 6 + 4 * 3 + 12 * 6 * 3 * 4
    # Every reconstructed slice, of every head and role, lies in the spans of the same two factors.
    R = tucker.reconstruct()
    P1 = tucker.u_dmodel @ tucker.u_dmodel.T
    P2 = tucker.u_headdim @ tucker.u_headdim.T
    torch.testing.assert_close(torch.einsum("mM,MNrh,Nn->mnrh", P1, R, P2), R, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tucker.u_dmodel.T @ tucker.u_dmodel, torch.eye(12), atol=1e-5, rtol=0)


def test_factorized_model_stores_each_factor_once(preset):
    model, _ = preset
    s = attention_shape(attentions(model)[0], model.config)
    for attn in attentions(model):
        W = attention_tensor(attn, model.config)
        install_factorized(attn, model.config, tucker_layer(W, (8, 4, 2)))
    keys = [k for k in model.state_dict() if ".self_attn." in k and "norm" not in k]
    layers = len(attentions(model))
    assert sum(k.endswith(".tucker.u_dmodel") for k in keys) == layers
    assert sum(k.endswith(".tucker.u_headdim") for k in keys) == layers
    assert not [k for k in keys if "_proj." in k]  # q/k/v/o_proj hold no tensors of their own
    assert all(isinstance(a.q_proj, TuckerProjection) for a in attentions(model))
    with pytest.raises(TjdkitError, match="already factorized"):
        attention_tensor(attentions(model)[0], model.config)
    stored = sum(model.state_dict()[k].numel() for k in keys)
    expected = 64 * 8 + 16 * 4 + (2 * s.heads + 2 * s.kv_heads) * 8 * 4  # K/V cores per real KV head
    assert stored == layers * expected < layers * dense_num_parameters(s)


def test_factorized_state_dict_reloads_into_empty_modules(preset):
    model, tokenizer = preset
    fresh = copy.deepcopy(model)  # still dense: stands in for a model built from its config
    shape = attention_shape(attentions(model)[0], model.config)
    for attn in attentions(model):
        install_factorized(attn, model.config, tucker_layer(attention_tensor(attn, model.config), (10, 6, 3)))
    for attn in attentions(fresh):
        FactorizedAttentionProjections.empty(shape, 10, 6).install(attn)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(logits(fresh, tokenizer), logits(model, tokenizer))
    twin = copy.deepcopy(model)  # the views must follow their own layer's factors, not the original's
    for attn in attentions(twin):
        assert all(getattr(attn, f"{n}_proj")._factors is attn.tucker for n in "qkvo")


# ---- truncation ----------------------------------------------------------------------------


def test_error_decreases_as_rank_grows_and_respects_the_hosvd_bound(pristine):
    model = pristine["tiny-llama"][0]
    W = attention_tensor(attentions(model)[1], model.config)
    spectra = mode_spectra(W)
    errors = []
    for ranks in [(4, 2, 1), (16, 4, 2), (32, 8, 3), (48, 12, 4), (64, 16, 4)]:
        error = tucker_layer(W, ranks).relative_error(W)
        errors.append(error)
        # Truncated HOSVD: error^2 <= sum over modes of the discarded squared singular values.
        discarded = sum(float((s[r:] ** 2).sum()) for s, r in zip(spectra, ranks))
        assert error**2 <= discarded / float((W**2).sum()) * (1 + 1e-4) + 1e-10
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5 < errors[0]


def test_factorized_module_equals_materialized_dense_weights(preset):
    """Truncated ranks, so the K/V copies differ and averaging them matters."""
    dense_model, tokenizer = preset
    factored_model = copy.deepcopy(dense_model)
    torch.manual_seed(1)
    for dense_attn, factored_attn in zip(attentions(dense_model), attentions(factored_model)):
        W = attention_tensor(dense_attn, dense_model.config)
        tucker = tucker_layer(W, (24, 8, 3))
        materialize(dense_attn, dense_model.config, tucker.reconstruct())
        factors = install_factorized(factored_attn, factored_model.config, tucker)
        x = torch.randn(2, 5, 64)
        a = torch.randn(2, 5, factors.core_o.shape[0] * 16)
        with torch.no_grad():
            for n in "qkv":
                dense_proj, factored_proj = getattr(dense_attn, f"{n}_proj"), getattr(factored_attn, f"{n}_proj")
                torch.testing.assert_close(factored_proj(x), dense_proj(x), rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(factors.dense_weight(n), dense_proj.weight, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(factored_attn.o_proj(a), dense_attn.o_proj(a), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(factors.dense_weight("o"), dense_attn.o_proj.weight, rtol=1e-4, atol=1e-6)
    # The KV cache keeps its size: k_proj still yields kv_heads * head_dim numbers per token.
    s = attention_shape(attentions(dense_model)[0], dense_model.config)
    assert dense_model.model.layers[0].self_attn.k_proj.weight.shape[0] == s.kv_heads * s.head_dim
    torch.testing.assert_close(logits(factored_model, tokenizer), logits(dense_model, tokenizer), rtol=1e-4, atol=1e-4)


def test_materialize_averages_the_copies_of_each_kv_head(pristine):
    model = copy.deepcopy(pristine["tiny-llama"][0])
    attn = attentions(model)[0]
    s = attention_shape(attn, model.config)
    R = torch.randn(s.d_model, s.head_dim, 4, s.heads)
    materialize(attn, model.config, R)
    for j in range(s.kv_heads):
        heads = range(j * s.group, (j + 1) * s.group)
        expected = torch.stack([R[:, :, 1, i] for i in heads]).mean(0).T  # [hd, d_model]
        torch.testing.assert_close(attn.k_proj.weight[j * s.head_dim : (j + 1) * s.head_dim].detach(), expected)


def test_biases_are_kept():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
    )  # fmt: skip
    torch.manual_seed(0)
    dense = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-zero biases
    factored = copy.deepcopy(dense)
    tucker = tucker_layer(attention_tensor(dense.model.layers[0].self_attn, config), (12, 5, 3))
    materialize(dense.model.layers[0].self_attn, config, tucker.reconstruct())
    install_factorized(factored.model.layers[0].self_attn, config, tucker)
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(factored(ids).logits, dense(ids).logits, rtol=1e-4, atol=1e-5)


def test_unsupported_attention_is_a_user_error(pristine):
    class FusedAttention(nn.Module):  # GPT-2 style: one c_attn for Q, K and V
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(64, 192)

    with pytest.raises(TjdkitError, match="unsupported attention.*missing q_proj"):
        attention_tensor(FusedAttention(), pristine["tiny-llama"][0].config)


# ---- spectra and auto ranks ------------------------------------------------------------------


def test_mode_spectra_match_numpy_svd_of_the_unfoldings():
    torch.manual_seed(0)
    W = torch.randn(20, 6, 4, 3) * torch.linspace(0.1, 2.0, 20)[:, None, None, None]
    spectra = mode_spectra(W)
    data = W.numpy().astype(np.float64)
    for mode, s in enumerate(spectra):
        unfolded = np.moveaxis(data, mode, 0).reshape(data.shape[mode], -1)  # Kolda unfolding
        expected = np.linalg.svd(unfolded, compute_uv=False)
        assert s.dtype == torch.float32
        np.testing.assert_allclose(s.numpy(), expected, rtol=1e-4, atol=1e-4 * expected[0])


def naive_rank(s, energy):
    squares = sorted((float(v) ** 2 for v in s), reverse=True)
    total = sum(squares)
    kept = 0.0
    for k, value in enumerate(squares, start=1):
        kept += value
        if kept >= energy * total:
            return k
    return len(squares)


@pytest.mark.parametrize(
    "values, energy, expected",
    [
        ([3.0, 2.0, 1.0], 9 / 14, 1),  # 9 of 14 kept by the first value exactly
        ([3.0, 2.0, 1.0], 0.65, 2),
        ([3.0, 2.0, 1.0], 0.93, 3),  # 13/14 = 0.9286 is not enough
        ([3.0, 2.0, 1.0], 1.0, 3),
        ([1.0, 1.0, 1.0, 1.0], 0.5, 2),
        ([1.0, 1.0, 1.0, 1.0], 0.51, 3),
        ([1.0, 3.0, 2.0], 0.65, 2),  # order of the input does not matter
        ([0.0, 0.0], 0.9, 1),  # nothing to keep: rank 1, never 0
    ],
)
def test_auto_ranks_on_hand_made_spectra(values, energy, expected):
    s = torch.tensor(values)
    assert auto_ranks([s, s, s], energy) == (expected, expected, expected)


def test_auto_ranks_match_the_formula_on_random_spectra():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        spectra = [torch.rand(n, generator=generator) ** 3 for n in (17, 9, 4)]
        energy = float(torch.rand(1, generator=generator)) * 0.999 + 0.001
        assert auto_ranks(spectra, energy) == tuple(naive_rank(s, energy) for s in spectra)
    W = torch.randn(16, 8, 4, 2)
    assert auto_ranks(mode_spectra(W), 1.0) == (16, 8, 4)  # full rank


@pytest.mark.parametrize("energy", [0.0, -0.5, 1.01, float("nan")])
def test_auto_ranks_reject_bad_energy(energy):
    s = torch.ones(3)
    with pytest.raises(TjdkitError, match="energy must lie in"):
        auto_ranks([s, s, s], energy)


# ---- specs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [("all", [0, 1, 2, 3, 4, 5]), (" ALL ", [0, 1, 2, 3, 4, 5]), ("0,5,2", [0, 2, 5]), ("3", [3]),
     ("last:2", [4, 5]), ("last:6", [0, 1, 2, 3, 4, 5]), ("1, 4", [1, 4])],
)  # fmt: skip
def test_parse_layers(spec, expected):
    assert parse_layers(spec, num_layers=6) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty layer spec"),
        ("   ", "empty layer spec"),
        ("6", "layer 6 is out of range: the model has layers 0..5"),
        ("-1", "layer -1 is out of range"),
        ("1,1", "layer 1 is listed twice"),
        ("0,,2", "'' is not a layer index"),
        ("first:2", "'first:2' is not a layer index"),
        ("1.5", "'1.5' is not a layer index"),
        ("last:0", "0 must be at least 1"),
        ("last:x", "'x' is not an integer"),
        ("last:7", "asks for 7 layers but the model has 6"),
    ],
)
def test_parse_layers_errors(spec, message):
    with pytest.raises(TjdkitError, match=re.escape(message)):
        parse_layers(spec, num_layers=6)


def test_parse_rank():
    assert parse_rank("auto") == "auto"
    assert parse_rank(" Auto ") == "auto"
    assert parse_rank("64,32,4") == (64, 32, 4)
    assert parse_rank("64, 32, 4") == (64, 32, 4)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0,32,4", "0 must be at least 1"),
        ("64,-2,4", "-2 must be at least 1"),
        ("64,32", "expected 3 ranks, got 2"),
        ("64,32,4,4", "expected 3 ranks, got 4"),
        ("64,x,4", "'x' is not an integer"),
        ("64,,4", "'' is not an integer"),
        ("", "expected 3 ranks, got 1"),
        ("big", "expected 3 ranks, got 1"),
        ("6.5,3,2", "'6.5' is not an integer"),
    ],
)
def test_parse_rank_errors(spec, message):
    with pytest.raises(TjdkitError, match=message) as info:
        parse_rank(spec)
    assert "\n" not in str(info.value) and "auto" in str(info.value)  # one line that says what works


@pytest.mark.parametrize(
    "rank, message",
    [
        ((65, 16, 4), "rank 65 for d_model exceeds its size 64"),
        ((64, 17, 4), "rank 17 for head_dim exceeds its size 16"),
        ((64, 16, 5), "rank 5 for role exceeds its size 4"),
        ((0, 16, 4), "rank for d_model must be a positive integer"),
        ((8, 4), "expected 3 ranks"),
    ],
)
def test_check_rank_names_the_mode(rank, message):
    with pytest.raises(TjdkitError, match=message):
        check_rank(rank, (64, 16, 4, 4))
    if len(rank) == 3:
        with pytest.raises(TjdkitError, match=message):
            tucker_layer(torch.zeros(64, 16, 4, 4), rank)


def test_from_tucker_rejects_a_decomposition_of_another_layer(pristine):
    model = pristine["tiny-llama"][0]
    attn = attentions(model)[0]
    tucker = tucker_layer(torch.randn(32, 16, 4, 4), (8, 4, 2))
    with pytest.raises(ValueError, match="does not fit"):
        FactorizedAttentionProjections.from_tucker(tucker, attention_shape(attn, model.config))
