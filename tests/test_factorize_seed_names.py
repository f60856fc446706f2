"""The seed-003 names, checked against independent truth: the dense model's logits at full rank,
numpy's SVD of the unfoldings for the energy rule, and the same work done through tjdkit's core."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tjdkit.errors import TjdkitError
from tjdkit.factorize import seed_names
from tjdkit.factorize.tpa import TpaAttention
from tjdkit.factorize.tucker import TuckerProjection, attention_tensor

PRESETS = ["tiny-llama", "tiny-gemma3"]
TEXT = "The capital of France is Paris. The quick brown fox jumps over the lazy dog. Question: what is the answer? "


@pytest.fixture(scope="module")
def pristine():
    from tjdkit.models import load_model

    return {name: load_model(name) for name in PRESETS}


@pytest.fixture(params=PRESETS)
def preset(request, pristine):
    model, tokenizer = pristine[request.param]
    return copy.deepcopy(model).eval(), tokenizer


def logits(model, tokenizer):
    ids = tokenizer(TEXT * 2, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def test_shared_factor_tucker_at_full_energy_keeps_the_logits(preset):
    model, tokenizer = preset
    before = logits(model, tokenizer)
    report = seed_names.factorize_all_layers_with_shared_factors(model, energy=1.0)
    assert len(report.layers) == len(model.model.layers)
    assert all(isinstance(layer.self_attn.q_proj, TuckerProjection) for layer in model.model.layers)
    assert all(r.relative_error < 1e-5 for r in report.layers)
    torch.testing.assert_close(logits(model, tokenizer), before, rtol=1e-4, atol=1e-4)


def test_shared_factor_tucker_with_a_tokenizer_reports_perplexity(preset):
    model, tokenizer = preset
    report = seed_names.factorize_all_layers_with_shared_factors(model, tokenizer, rank="2x", calibration=TEXT * 4, eval_tokens=0)
    assert report.compression >= 1.9
    with pytest.raises(TjdkitError, match="tokenizer"):
        seed_names.factorize_all_layers_with_shared_factors(model, None, eval_tokens=64)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99, 1.0])
def test_adaptive_rank_selection_follows_the_energy_rule_of_numpys_svd(pristine, energy):
    model = pristine["tiny-gemma3"][0]
    attn = model.model.layers[0].self_attn
    W = attention_tensor(attn, model.config).double().numpy()
    expected = []
    for mode in range(3):
        unfolding = np.moveaxis(W, mode, 0).reshape(W.shape[mode], -1)
        squared = np.linalg.svd(unfolding, compute_uv=False) ** 2
        share = np.cumsum(squared) / squared.sum()
        expected.append(int(np.searchsorted(share, energy - 1e-12) + 1) if energy < 1.0 else len(squared))
    assert seed_names.adaptive_rank_selection(attn, energy, config=model.config) == tuple(expected)
    assert seed_names.adaptive_rank_selection(attention_tensor(attn, model.config), energy) == tuple(expected)


def test_adaptive_rank_selection_needs_the_config_for_a_module(pristine):
    model = pristine["tiny-llama"][0]
    with pytest.raises(TjdkitError, match="config"):
        seed_names.adaptive_rank_selection(model.model.layers[0].self_attn)


def test_convert_from_standard_weights_is_exact_at_full_rank(preset):
    model, tokenizer = preset
    before = logits(model, tokenizer)
    reports = seed_names.convert_from_standard_weights(model)
    assert len(reports) == len(model.model.layers)
    assert all(isinstance(layer.self_attn, TpaAttention) for layer in model.model.layers)
    torch.testing.assert_close(logits(model, tokenizer), before, rtol=1e-4, atol=1e-4)


def test_contextual_decomposition_of_one_layer(preset):
    model, tokenizer = preset
    before = logits(model, tokenizer)
    report = seed_names.contextual_tensor_decomposition(model.model.layers[0], model.config, "full")
    assert isinstance(model.model.layers[0].self_attn, TpaAttention)
    assert not isinstance(model.model.layers[1].self_attn, TpaAttention)
    assert max(report.weight_errors.values()) < 1e-5
    torch.testing.assert_close(logits(model, tokenizer), before, rtol=1e-4, atol=1e-4)
    low = seed_names.contextual_tensor_decomposition(model.model.layers[1], model.config, [1, 1, 1])
    assert low.rank == (1, 1, 1)


def test_apply_contextual_decomposition_equals_the_core_conversion(pristine):
    from tjdkit.factorize import FactorizeOptions, factorize_model

    model, tokenizer = pristine["tiny-gemma3"]
    ours, core = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    kwargs = dict(rank="2,1,1", calibration=TEXT * 4, calibration_tokens=64, steps=5)
    torch.manual_seed(0)
    report = seed_names.apply_contextual_tensor_decomposition(ours, tokenizer, **kwargs)
    torch.manual_seed(0)
    factorize_model(core, tokenizer, FactorizeOptions(method="tpa", eval_tokens=0, **kwargs))
    assert [r.ranks for r in report.layers] == [(2, 1, 1)] * len(model.model.layers)
    torch.testing.assert_close(logits(ours, tokenizer), logits(core, tokenizer))
    with pytest.raises(TjdkitError, match="tokenizer"):
        seed_names.apply_contextual_tensor_decomposition(copy.deepcopy(model), None)
