"""Factorise a whole model's attention, layer by layer, and measure what it cost.

    options = FactorizeOptions(method="tucker", rank="auto", layers="all")
    report = factorize_model(model, tokenizer, options, on_layer=print)
    report.perplexity_before, report.perplexity_after, report.layers[0].ranks

Perplexity before and after is taken on the same fixed held-out text in the same run,
so the two numbers are comparable; `seconds` counts the factorisation alone (not the
perplexity passes nor the model load), which is what the 60 s target is about.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn as nn

from tjdkit.config import FactorizeSection
from tjdkit.errors import TjdkitError
from tjdkit.models.quantize import refuse_quantized

Method = Literal["tucker", "tpa", "latent"]
METHODS = ("tucker", "tpa", "latent")
CHECK_TOKENS = 1024  # rank auto: calibration tokens after the search's own that check its choice


# The recipe's `factorize` section is the library's options too: one set of defaults.
FactorizeOptions = FactorizeSection


@dataclass
class LayerResult:
    layer: int
    attention: str  # "sliding", "global" or "full"
    ranks: tuple[int, ...]
    parameters_before: int
    parameters_after: int
    relative_error: float
    seconds: float
    kv_numbers_before: int
    kv_numbers_after: int
    spectra: dict[str, list[float]] = field(default_factory=dict)  # mode or role -> singular values
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def compression(self) -> float:
        return self.parameters_before / max(self.parameters_after, 1)


@dataclass
class FactorizeReport:
    model: str
    method: Method
    options: FactorizeOptions
    layers: list[LayerResult]
    seconds: float
    perplexity_before: Optional[float] = None
    perplexity_after: Optional[float] = None
    eval_tokens: int = 0
    dtype_bytes: int = 4
    num_layers: int = 0
    budget: Optional[dict] = None  # rank auto (tucker): the sensitivity search and its check
    perplexity_healed: Optional[float] = None  # after `heal_factorized`, on the same held-out tokens
    heal: Optional[dict] = None

    @property
    def parameters_before(self) -> int:
        return sum(r.parameters_before for r in self.layers)

    @property
    def parameters_after(self) -> int:
        return sum(r.parameters_after for r in self.layers)

    @property
    def compression(self) -> float:
        return self.parameters_before / max(self.parameters_after, 1)

    @property
    def perplexity_change(self) -> Optional[float]:
        if self.perplexity_before is None or self.perplexity_after is None:
            return None
        return self.perplexity_after / self.perplexity_before - 1.0

    def metadata(self) -> dict:
        """What a saved model directory records so that `load_model` can rebuild its modules."""
        return {
            "version": 1,
            "method": self.method,
            "materialized": bool(self.method == "tucker" and self.options.materialize),
            "layers": {str(r.layer): {"ranks": list(r.ranks)} for r in self.layers if not r.extra.get("dense")},
        }

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "method": self.method,
            "options": asdict(self.options),
            "seconds": self.seconds,
            "perplexity_before": self.perplexity_before,
            "perplexity_after": self.perplexity_after,
            "perplexity_change": self.perplexity_change,
            "eval_tokens": self.eval_tokens,
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "compression": self.compression,
            "kv_bytes_per_token_before": sum(r.kv_numbers_before for r in self.layers) * self.dtype_bytes,
            "kv_bytes_per_token_after": sum(r.kv_numbers_after for r in self.layers) * self.dtype_bytes,
            "layers": [{**asdict(r), "compression": r.compression} for r in self.layers],
            "budget": self.budget,
            "perplexity_healed": self.perplexity_healed,
            "heal": self.heal,
        }


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, each with a `self_attn` (Llama family, Gemma 3)."""
    layers = getattr(model.base_model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(hasattr(layer, "self_attn") for layer in layers):
        raise TjdkitError(
            f"unsupported architecture {type(model).__name__}: factorize needs decoder layers with "
            "self_attn.q_proj/k_proj/v_proj/o_proj (Llama family, Gemma 3)"
        )
    return layers


def attention_kind(config: Any, index: int) -> str:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text_config, "layer_types", None)
    if not layer_types:
        return "full"
    return "sliding" if layer_types[index] == "sliding_attention" else "global"


def factorize_model(
    model: nn.Module,
    tokenizer: Any,
    options: FactorizeOptions,
    name: str = "",
    on_layer: Optional[Callable[[LayerResult, int, int], None]] = None,
    on_stage: Optional[Callable[[str], None]] = None,
) -> FactorizeReport:
    """Factorise the attention of `options.layers` in place; perplexity before and after."""
    from tjdkit.factorize.specs import parse_layers
    from tjdkit.factorize.texts import calibration_ids, heldout_ids, perplexity

    if options.method not in METHODS:
        raise TjdkitError(f"unknown method '{options.method}' (choose from {', '.join(METHODS)})")
    refuse_quantized(model, "factorising attention")
    layers = decoder_layers(model)
    chosen = parse_layers(options.layers, len(layers))
    specs = _layer_specs(options, chosen)
    # Every spec is parsed before anything slow runs, so a typo costs nothing.
    plans = {index: _plan(options.method, spec) for index, spec in specs.items()}
    for index in chosen:
        _check_plan(layers[index].self_attn, model.config, options.method, plans[index])
    searched = [i for i in chosen if options.method == "tucker" and plans[i][0] == "auto"]
    needs_calibration = options.method == "tpa" or options.activation_aware or bool(searched)  # latent: if aware
    calibration_text = calibration_ids(options.calibration, tokenizer, options.calibration_tokens) if needs_calibration else None

    eval_ids = heldout_ids(tokenizer, options.eval_tokens) if options.eval_tokens else None
    before = None
    if eval_ids is not None:
        on_stage and on_stage("perplexity of the original model")
        before = perplexity(model, eval_ids)
    calibration = {}
    if calibration_text is not None and (options.method == "tpa" or options.activation_aware):
        on_stage and on_stage("calibration activations")
        calibration = _attention_inputs(model, layers, chosen, calibration_text)

    started = time.perf_counter()
    budget = None
    if searched:
        budget = _search_budget(model, layers, searched, options, calibration, calibration_text, plans, on_stage)
    results = []
    for position, index in enumerate(chosen):
        layer_started = time.perf_counter()
        if options.method == "tucker":
            result = _tucker_layer(layers[index], model.config, index, plans[index], options, calibration.get(index))
        elif options.method == "latent":
            result = _latent_layer(layers[index], model.config, index, plans[index], calibration.get(index))
        else:
            result = _tpa_layer(layers[index], model.config, index, plans[index], options, calibration[index])
        result.seconds = time.perf_counter() - layer_started
        results.append(result)
        if on_layer:
            on_layer(result, position + 1, len(chosen))
    seconds = time.perf_counter() - started

    after = None
    if eval_ids is not None:
        on_stage and on_stage("perplexity of the factorized model")
        after = perplexity(model, eval_ids)
    dtype = next(model.parameters()).dtype
    return FactorizeReport(
        model=name or str(getattr(model.config, "name_or_path", "")),
        method=options.method,
        options=options,
        layers=results,
        seconds=seconds,
        perplexity_before=before,
        perplexity_after=after,
        eval_tokens=0 if eval_ids is None else int(eval_ids.shape[1]),
        dtype_bytes=torch.finfo(dtype).bits // 8,
        num_layers=len(layers),
        budget=budget,
    )


def _search_budget(model, layers, searched, options, calibration, calibration_text, plans, on_stage) -> dict:
    """rank auto (tucker): per-layer ranks within options.max_ppl_increase; sets plans in place."""
    from tjdkit.factorize.sensitivity import ShortlistDivergence, search_ranks
    from tjdkit.factorize.texts import perplexity
    from tjdkit.factorize.tucker import activation_scale

    scales = {i: activation_scale(calibration[i]) if i in calibration else None for i in searched}
    ids = calibration_text[:, : options.budget_tokens]
    check = calibration_text[:, options.budget_tokens : options.budget_tokens + CHECK_TOKENS]  # tokens the search never saw
    check = check if check.shape[1] >= 16 else ids
    on_stage and on_stage("the dense model's shortlist")
    shortlist = ShortlistDivergence(model, ids)
    choice = search_ranks(
        model, layers, searched, scales, ids, options.max_ppl_increase / 100.0, perplexity, on_stage=on_stage,
        trial_perplexity=shortlist, check_ids=check,
    )
    for index, ranks in choice.ranks.items():
        plans[index] = ("dense",) if ranks is None else ("fixed", ranks)
    return {
        "max_ppl_increase": options.max_ppl_increase / 100.0,
        "tokens": int(ids.shape[1]),
        "check_tokens": int(check.shape[1]),
        "shortlist": shortlist.size,
        "perplexity_dense": choice.dense_perplexity,
        "perplexity_chosen": choice.perplexity,
        "increase": choice.increase,
        "attempts": choice.attempts,
        "fits": choice.fits,
        "curves": {
            str(index): [
                {"ranks": None if o.ranks is None else list(o.ranks), "parameters": o.parameters,
                 "increase_bound": math.expm1(o.log_ppl_increase)}  # exp(95% upper bound of the KL from the dense model) - 1
                for o in curve.options
            ]
            for index, curve in choice.curves.items()
        },
    }


# ---- plans: what each layer gets ------------------------------------------------------------


def _layer_specs(options: FactorizeOptions, chosen: list[int]) -> dict[int, str]:
    specs = {index: options.rank for index in chosen}
    for key, spec in options.layer_ranks.items():
        text = str(key).strip()
        if not text.isdigit() or int(text) not in specs:
            raise TjdkitError(
                f"layer_ranks names layer '{key}', which is not among the layers being factorized ({options.layers})"
            )
        specs[int(text)] = str(spec)
    return specs


def _plan(method: str, spec: str) -> Any:
    """("auto",), ("fixed", ranks) or ("compress", factor) for one layer's spec."""
    from tjdkit.factorize.budget import parse_compression

    text = str(spec).strip().lower()
    if text == "auto":
        return ("auto",)
    if text == "energy":  # ranks by --energy alone, the rule `auto` used before the budget search
        return ("energy",)
    factor = parse_compression(text)
    if factor is not None:
        if method != "tucker":
            raise TjdkitError(f"compression targets like '{spec}' are for --method tucker; give TPA ranks as R_q,R_k,R_v")
        return ("compress", factor)
    if method == "tucker":
        from tjdkit.factorize.specs import parse_rank

        return ("fixed", parse_rank(text))
    if method == "latent":
        from tjdkit.factorize.latent import parse_latent_rank

        return ("fixed", parse_latent_rank(text))
    from tjdkit.factorize.tpa import parse_tpa_rank

    return ("fixed", parse_tpa_rank(text))


def _check_plan(attn: nn.Module, config: Any, method: str, plan: Any) -> None:
    """Fail on an unsupported layer or a rank that does not fit it, before anything slow runs."""
    from tjdkit.factorize.budget import compression_ranks
    from tjdkit.factorize.specs import check_rank
    from tjdkit.factorize.tucker import attention_shape

    if method == "tpa" and type(attn).__name__ == "TpaAttention":
        raise TjdkitError("this attention layer is already converted to TPA")
    if type(attn).__name__ in ("TpaAttention", "LatentKVAttention"):
        raise TjdkitError(f"this attention layer is already converted ({type(attn).__name__})")
    shape = attention_shape(attn, config)
    if method == "latent":
        from tjdkit.factorize.latent import check_latent_rank

        if plan[0] == "fixed":
            check_latent_rank(plan[1], shape)
        return
    if plan[0] == "compress":
        compression_ranks(shape, plan[1])
    elif plan[0] == "fixed" and method == "tucker":
        check_rank(plan[1], shape.tensor_shape)
    elif plan[0] == "fixed":
        from tjdkit.factorize.tpa import check_tpa_rank

        check_tpa_rank(plan[1], shape)


# ---- tucker ---------------------------------------------------------------------------------


def _tucker_layer(layer: nn.Module, config: Any, index: int, plan: Any, options: FactorizeOptions, inputs) -> LayerResult:
    from tjdkit.factorize.rank import auto_ranks, mode_spectra
    from tjdkit.factorize.budget import compression_ranks, factorized_num_parameters
    from tjdkit.factorize.specs import MODE_NAMES, check_rank
    from tjdkit.factorize.tucker import (
        PROJECTIONS,
        activation_scale,
        attention_shape,
        attention_tensor,
        dense_num_parameters,
        dense_weights,
        install_factorized,
        materialize,
        scale_dmodel,
        tucker_layer,
    )

    attn = layer.self_attn
    shape = attention_shape(attn, config)
    tensor = attention_tensor(attn, config)
    scale = activation_scale(inputs) if inputs is not None else None
    spectra = mode_spectra(scale_dmodel(tensor, scale))
    if plan[0] == "dense":  # rank auto found no saving here worth its perplexity
        return _dense_layer(attn, config, index, shape, spectra)
    if plan[0] in ("auto", "energy"):
        ranks = auto_ranks(spectra, options.energy)
    elif plan[0] == "compress":
        ranks = compression_ranks(shape, plan[1])
    else:
        ranks = check_rank(plan[1], tensor.shape)
    tucker = tucker_layer(tensor, ranks, input_scale=scale)
    reconstructed = tucker.reconstruct()
    new = dense_weights(shape, reconstructed)
    old = {name: getattr(attn, name).weight.detach().float() for name in PROJECTIONS}
    error = torch.sqrt(sum(((old[n] - new[n]) ** 2).sum() for n in PROJECTIONS) / sum((old[n] ** 2).sum() for n in PROJECTIONS))
    dense = dense_num_parameters(shape)
    if options.materialize:
        materialize(attn, config, reconstructed)
        after = dense
    else:
        install_factorized(attn, config, tucker)
        after = factorized_num_parameters(shape, ranks[0], ranks[1])
    kv = 2 * shape.kv_heads * shape.head_dim
    return LayerResult(
        layer=index,
        attention=attention_kind(config, index),
        ranks=tuple(int(r) for r in ranks),
        parameters_before=dense,
        parameters_after=after,
        relative_error=float(error),
        seconds=0.0,
        kv_numbers_before=kv,
        kv_numbers_after=kv,
        spectra={name: s.tolist() for name, s in zip(MODE_NAMES, spectra)},
    )


def _dense_layer(attn, config, index: int, shape, spectra) -> LayerResult:
    from tjdkit.factorize.specs import MODE_NAMES
    from tjdkit.factorize.tucker import dense_num_parameters

    dense = dense_num_parameters(shape)
    kv = 2 * shape.kv_heads * shape.head_dim
    return LayerResult(
        layer=index,
        attention=attention_kind(config, index),
        ranks=tuple(int(d) for d in shape.tensor_shape[:3]),
        parameters_before=dense,
        parameters_after=dense,
        relative_error=0.0,
        seconds=0.0,
        kv_numbers_before=kv,
        kv_numbers_after=kv,
        spectra={name: s.tolist() for name, s in zip(MODE_NAMES, spectra)},
        extra={"dense": True},
    )


# ---- latent KV ---------------------------------------------------------------------------------


def _latent_layer(layer, config, index: int, plan: Any, inputs) -> LayerResult:
    from tjdkit.factorize.latent import auto_latent_rank, convert_latent_layer
    from tjdkit.factorize.tucker import attention_shape

    shape = attention_shape(layer.self_attn, config)
    rank = auto_latent_rank(shape) if plan[0] in ("auto", "energy") else plan[1]
    report = convert_latent_layer(layer, config, rank, inputs)
    return LayerResult(
        layer=index,
        attention=attention_kind(config, index),
        ranks=report.rank,
        parameters_before=report.parameters_before,
        parameters_after=report.parameters_after,
        relative_error=report.value_error,
        seconds=0.0,
        kv_numbers_before=report.kv_numbers_before,
        kv_numbers_after=report.kv_numbers_after,
        extra={"key_share": report.key_share},
    )


# ---- tpa --------------------------------------------------------------------------------------


@torch.no_grad()
def _attention_inputs(model, layers, chosen, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each chosen attention's input [N, d_model] on the calibration ids [1, N], from the original model."""
    captured: dict[int, torch.Tensor] = {}

    def capture(index):
        def hook(_module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            captured[index] = hidden.detach().reshape(-1, hidden.shape[-1]).float().cpu()

        return hook

    handles = [layers[i].self_attn.register_forward_pre_hook(capture(i), with_kwargs=True) for i in chosen]
    try:
        device = next(model.parameters()).device
        model.base_model(input_ids=ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _tpa_layer(layer, config, index: int, plan: Any, options: FactorizeOptions, inputs) -> LayerResult:
    from tjdkit.factorize.tpa import auto_tpa_ranks, check_tpa_rank, convert_layer, head_spectra
    from tjdkit.factorize.tucker import attention_shape

    attn = layer.self_attn
    shape = attention_shape(attn, config)
    spectra = head_spectra(attn, config)
    if plan[0] in ("auto", "energy"):
        rank = auto_tpa_ranks(spectra, options.energy)
    else:
        rank = check_tpa_rank(plan[1], shape)
    tpa = convert_layer(layer, config, rank, calibration_inputs=inputs, steps=options.steps, lr=options.lr)
    o_params = shape.d_model * shape.heads * shape.head_dim  # o_proj is kept as it is
    final = tpa.errors_refined or tpa.errors_init
    error = max(final.values()) if final else 0.0
    return LayerResult(
        layer=index,
        attention=attention_kind(config, index),
        ranks=tuple(int(r) for r in rank),
        parameters_before=tpa.parameters_before + o_params,
        parameters_after=tpa.parameters_after + o_params,
        relative_error=float(error),
        seconds=0.0,
        kv_numbers_before=tpa.kv_numbers_before,
        kv_numbers_after=tpa.kv_numbers_after,
        spectra={role: s.tolist() for role, s in spectra.items()},
        extra={"errors_init": tpa.errors_init, "errors_refined": tpa.errors_refined},
    )
