"""Factorised attention: shared-factor Tucker (TensorLLM) of each layer's Q/K/V/O weights, and
conversion to Tensor Product Attention (T6) with a KV cache of factors.

    from tjdkit.factorize import FactorizeOptions, factorize_model, save_factorized
    report = factorize_model(model, tokenizer, FactorizeOptions(method="tucker", rank="2x"))
    save_factorized(model, tokenizer, "out/", report.metadata())   # load_model("out/") rebuilds it

One layer by hand:

    from tjdkit.factorize import DEFAULT_ENERGY, attention_tensor, auto_ranks, mode_spectra, tucker_layer
    from tjdkit.factorize import install_factorized, materialize
    W = attention_tensor(attn, model.config)               # [d_model, head_dim, 4, heads]
    ranks = auto_ranks(mode_spectra(W), DEFAULT_ENERGY)    # or parse_rank("64,32,4")
    tucker = tucker_layer(W, ranks)
    install_factorized(attn, model.config, tucker)         # or materialize(attn, config, tucker.reconstruct())

The seed's names (seed 003) work too: `factorize_all_layers_with_shared_factors(model)`,
`adaptive_rank_selection`, `contextual_tensor_decomposition`, `apply_contextual_tensor_decomposition`,
`convert_from_standard_weights` (see `seed_names`).

The core takes specs and tensors and raises TjdkitError on user mistakes; the CLI renders.
"""

from __future__ import annotations

from tjdkit.factorize.convert import FactorizeOptions, FactorizeReport, LayerResult, factorize_model
from tjdkit.factorize.rank import DEFAULT_ENERGY, auto_ranks, mode_spectra
from tjdkit.factorize.budget import compression_ranks
from tjdkit.factorize.saving import load_factorized, save_factorized
from tjdkit.factorize.seed_names import (
    adaptive_rank_selection,
    apply_contextual_tensor_decomposition,
    contextual_tensor_decomposition,
    convert_from_standard_weights,
    factorize_all_layers_with_shared_factors,
)
from tjdkit.factorize.tpa import TpaAttention, auto_tpa_ranks, convert_layer, head_spectra, parse_tpa_rank
from tjdkit.factorize.specs import MODE_NAMES, check_rank, parse_layers, parse_rank
from tjdkit.factorize.tucker import (
    ROLES,
    AttentionShape,
    FactorizedAttentionProjections,
    TuckerAttention,
    TuckerProjection,
    attention_shape,
    activation_scale,
    attention_tensor,
    dense_num_parameters,
    dense_weights,
    install_factorized,
    materialize,
    tucker_layer,
)

__all__ = [
    "DEFAULT_ENERGY",
    "adaptive_rank_selection",
    "apply_contextual_tensor_decomposition",
    "contextual_tensor_decomposition",
    "convert_from_standard_weights",
    "factorize_all_layers_with_shared_factors",
    "FactorizeOptions",
    "FactorizeReport",
    "LayerResult",
    "TpaAttention",
    "activation_scale",
    "auto_tpa_ranks",
    "compression_ranks",
    "convert_layer",
    "factorize_model",
    "head_spectra",
    "load_factorized",
    "parse_tpa_rank",
    "save_factorized",
    "MODE_NAMES",
    "ROLES",
    "AttentionShape",
    "FactorizedAttentionProjections",
    "TuckerAttention",
    "TuckerProjection",
    "attention_shape",
    "attention_tensor",
    "auto_ranks",
    "check_rank",
    "dense_num_parameters",
    "dense_weights",
    "install_factorized",
    "materialize",
    "mode_spectra",
    "parse_layers",
    "parse_rank",
    "tucker_layer",
]
