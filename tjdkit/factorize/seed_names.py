"""The seed's Gemma TPA function names (seed 003), as thin calls into tjdkit's factorisation.

Users of that code call these five functions; each one here does the same job with tjdkit's
tested core (shared-factor Tucker, T6 conversion), so their scripts port by changing an import:

    from tjdkit.factorize.seed_names import factorize_all_layers_with_shared_factors
    report = factorize_all_layers_with_shared_factors(model, tokenizer, rank="2x")

The seed made them methods of its own Gemma class; here they take any supported model
(Gemma 3, the Llama family) as their first argument and change it in place.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch.nn as nn
from torch import Tensor

from tjdkit.errors import TjdkitError
from tjdkit.factorize.convert import FactorizeOptions, FactorizeReport, decoder_layers, factorize_model
from tjdkit.factorize.rank import DEFAULT_ENERGY, auto_ranks, mode_spectra
from tjdkit.factorize.specs import Rank
from tjdkit.factorize.tpa import TpaLayerReport, auto_tpa_ranks, convert_layer, head_spectra, parse_tpa_rank
from tjdkit.factorize.tucker import attention_shape, attention_tensor

TpaRankArg = Union[str, Sequence[int]]


def factorize_all_layers_with_shared_factors(
    model: nn.Module,
    tokenizer: Any = None,
    *,
    rank: str = "auto",
    energy: float = DEFAULT_ENERGY,
    max_ppl_increase: float = 1.0,
    layers: str = "all",
    materialize: bool = False,
    calibration: str = "sharegpt",
    eval_tokens: int = 0,
) -> FactorizeReport:
    """Tucker-factorise every chosen layer's Q/K/V/O with factors shared by all heads (TensorLLM).

    rank: "auto" (with a tokenizer: the smallest within `max_ppl_increase` percent on `calibration`
    text; without one: by `energy`), "energy", "R_dmodel,R_headdim,R_role" or a target like "2x".
    With a tokenizer the decomposition is activation-aware on `calibration` text and, when
    eval_tokens > 0, the report carries perplexity before and after; without one it is data-free.
    """
    if tokenizer is None and str(rank).strip().lower() == "auto":
        rank = "energy"  # the budget search measures perplexity, which needs text
    if tokenizer is None and eval_tokens:
        raise TjdkitError("eval_tokens needs the tokenizer: pass factorize_all_layers_with_shared_factors(model, tokenizer, ...)")
    options = FactorizeOptions(
        method="tucker",
        rank=str(rank),
        energy=energy,
        max_ppl_increase=max_ppl_increase,
        layers=layers,
        materialize=materialize,
        activation_aware=tokenizer is not None,
        calibration=calibration,
        eval_tokens=eval_tokens,
    )
    return factorize_model(model, tokenizer, options)


def adaptive_rank_selection(weights: Union[Tensor, nn.Module], energy: float = DEFAULT_ENERGY, config: Any = None) -> Rank:
    """The Tucker ranks (R_dmodel, R_headdim, R_role) that keep `energy` of each mode's spectrum.

    weights: a layer's attention tensor [d_model, head_dim, 4, heads] (see `attention_tensor`),
    or the attention module itself together with the model's `config`.
    """
    if isinstance(weights, nn.Module):
        if config is None:
            raise TjdkitError("adaptive_rank_selection(attention_module, ...) needs config=model.config")
        weights = attention_tensor(weights, config)
    if not isinstance(weights, Tensor) or weights.dim() != 4:
        raise TjdkitError("adaptive_rank_selection takes an attention tensor [d_model, head_dim, 4, heads] or an attention module")
    return auto_ranks(mode_spectra(weights), energy)


def _tpa_rank(layer: nn.Module, config: Any, rank: TpaRankArg, energy: float) -> tuple[int, int, int]:
    """"auto" (by energy), "full" (exact), "R_q,R_k,R_v" or a sequence of three ints."""
    if isinstance(rank, str):
        text = rank.strip().lower()
        if text == "full":
            shape = attention_shape(layer.self_attn, config)
            return (shape.heads, shape.kv_heads, shape.kv_heads)
        spec = parse_tpa_rank(text)
        if spec == "auto":
            return auto_tpa_ranks(head_spectra(layer.self_attn, config), energy)
        return tuple(spec)  # type: ignore[return-value]
    return tuple(int(r) for r in rank)  # type: ignore[return-value]


def contextual_tensor_decomposition(
    layer: nn.Module,
    config: Any,
    rank: TpaRankArg = "auto",
    calibration_inputs: Optional[Tensor] = None,
    *,
    energy: float = DEFAULT_ENERGY,
    steps: int = 100,
    lr: float = 1e-3,
) -> TpaLayerReport:
    """Replace one decoder layer's attention by T6 contextual tensor products of Q, K and V.

    calibration_inputs [..., d_model] (the attention's inputs on real text) refine the factors
    that are below full rank; without them the SVD initialisation is kept.
    """
    return convert_layer(layer, config, _tpa_rank(layer, config, rank, energy), calibration_inputs, steps=steps, lr=lr)


def apply_contextual_tensor_decomposition(
    model: nn.Module,
    tokenizer: Any,
    *,
    rank: str = "auto",
    energy: float = DEFAULT_ENERGY,
    layers: str = "all",
    calibration: str = "sharegpt",
    calibration_tokens: int = 2048,
    steps: int = 100,
    lr: float = 1e-3,
    eval_tokens: int = 0,
) -> FactorizeReport:
    """Convert every chosen layer to TPA, refining the factors on `calibration` text (T6)."""
    if tokenizer is None:
        raise TjdkitError("apply_contextual_tensor_decomposition needs the tokenizer: it calibrates on text")
    options = FactorizeOptions(
        method="tpa",
        rank=str(rank),
        energy=energy,
        layers=layers,
        calibration=calibration,
        calibration_tokens=calibration_tokens,
        steps=steps,
        lr=lr,
        eval_tokens=eval_tokens,
    )
    return factorize_model(model, tokenizer, options)


def convert_from_standard_weights(model: nn.Module, rank: TpaRankArg = "full", *, energy: float = DEFAULT_ENERGY) -> list[TpaLayerReport]:
    """Turn a standard (dense-attention) model into TPA form in place, without data.

    rank="full" is exact: the converted model gives the same logits as the original, with its
    cache holding factors instead of keys and values; lower ranks truncate the SVD.
    """
    return [
        convert_layer(layer, model.config, _tpa_rank(layer, model.config, rank, energy), None, steps=0)
        for layer in decoder_layers(model)
    ]


__all__ = [
    "adaptive_rank_selection",
    "apply_contextual_tensor_decomposition",
    "contextual_tensor_decomposition",
    "convert_from_standard_weights",
    "factorize_all_layers_with_shared_factors",
]
