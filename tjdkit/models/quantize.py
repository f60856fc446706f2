"""float16 weights with float32 arithmetic, for decoding on the CPU.

A decoding step reads every weight once per forward, so on the CPU its time follows the bytes
read. fbgemm's fp16 GEMM (torch's dynamic quantisation with dtype float16) stores the weights
of every nn.Linear in float16, half of float32's bytes, and computes in float32 after an
in-register conversion, so a row's result does not depend on the other rows of the forward:
verification stays lossless inside the format, as in float32.

Measured against the alternatives on a 2-core AVX2 EPYC (Gemma 3 270M, benchmarks/README.md):
bfloat16 halves the bytes too, but without bf16 instructions a bfloat16 GEMM of more than one
row runs row by row, so it speeds up `ar` and slows verification; int8 dynamic quantisation
reads a quarter of the bytes but quantises activations with one scale per forward, so a token's
logits change with the number of tokens in the forward and verify's output can differ from
`ar`'s (not lossless); torchao's int8 configs ran 40x slower than either on that CPU, and
`torch._weight_int8pack_mm` 3x slower than float32. torch marks torch.ao.quantization as
deprecated in favour of torchao; tjdkit keeps it for its fp16 GEMM, which torchao lacks on the CPU.

A model in this format is close to the float32 one, not equal to it. It decodes only: it has
no gradients, so train, factorize and TNOT refuse it.
"""

from __future__ import annotations

import warnings

import torch

from tjdkit.errors import TjdkitError

FP16_WEIGHTS = "fp16-weights"
WEIGHT_FORMATS = (FP16_WEIGHTS,)  # formats load_model builds from a float32 model, beside the torch dtypes


def quantize_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Every nn.Linear of a float32 CPU model -> float16 weights with float32 arithmetic, in place;
    returns the model. Embeddings stay float32 (a lookup reads one row); a tied output layer gets
    its own float16 copy, so the embedding is untouched. The same modules as torch's
    `quantize_dynamic(model, {nn.Linear}, dtype=torch.float16)`, each weight packed once (see
    `fp16_linear`)."""
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type != "cpu":
        raise TjdkitError(f"{FP16_WEIGHTS} is a CPU path: on a GPU use --dtype bfloat16")
    if parameter is not None and parameter.dtype != torch.float32:
        raise TjdkitError(f"{FP16_WEIGHTS} starts from float32 weights, not {parameter.dtype}")
    model.eval()
    with warnings.catch_warnings():  # the deprecation notice (see above)
        warnings.simplefilter("ignore")
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is torch.nn.Linear:  # exact type, as quantize_dynamic matches it
                    setattr(parent, name, fp16_linear(child))
    model.tjdkit_weights = FP16_WEIGHTS
    return model


def fp16_linear(linear: torch.nn.Linear) -> torch.nn.Module:
    """The dynamic fp16 Linear `quantize_dynamic` would build for `linear`, with its weight packed once.

    The quantised Linear's constructor packs a zero weight of the layer's full size before
    `from_float` packs the real one, and on Gemma 3's 262k-row output layer that first pack costs
    as much as the second: converting that layer took 16.4 s with `quantize_dynamic` and 7.8 s
    this way on a 2-core Xeon. Built at 1 x 1, then given the layer's sizes and weight, it packs
    only the real weight: the same packed weight, the same outputs.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    quantized = DynamicLinear(1, 1, bias_=linear.bias is not None, dtype=torch.float16)
    quantized.in_features, quantized.out_features = linear.in_features, linear.out_features
    bias = None if linear.bias is None else linear.bias.detach().float()
    quantized.set_weight_bias(linear.weight.detach().float(), bias)
    return quantized


def weight_format(model) -> str:
    """What the model's weights are: "fp16-weights" for a quantised model, else its parameters' dtype."""
    if getattr(model, "tjdkit_weights", None):
        return model.tjdkit_weights
    parameter = next(model.parameters(), None)
    return str(parameter.dtype).replace("torch.", "") if parameter is not None else "float32"


def is_quantized(model) -> bool:
    return getattr(model, "tjdkit_weights", None) in WEIGHT_FORMATS


def refuse_quantized(model, what: str) -> None:
    """One clear line where a quantised model cannot work (anything that needs gradients or float weights)."""
    if is_quantized(model):
        raise TjdkitError(f"{what} needs trainable weights: {FP16_WEIGHTS} models decode only (use --dtype float32 or bfloat16)")


def weights_copy(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """A copy of a float32 model with weights in `dtype` ("float32", "bfloat16", "float16" or
    "fp16-weights"), for measuring formats side by side in one process; the original is untouched."""
    import copy

    if dtype in WEIGHT_FORMATS:
        return quantize_weights(copy.deepcopy(model))
    target = getattr(torch, dtype, None)
    if not isinstance(target, torch.dtype) or not target.is_floating_point:
        raise TjdkitError(f"unknown weight format {dtype!r}")
    return copy.deepcopy(model).to(getattr(torch, dtype))
