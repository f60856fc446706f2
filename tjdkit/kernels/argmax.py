"""The argmax of a large output layer without computing every logit, exactly.

Greedy decoding reads one thing from the output layer: which token scores highest. On Gemma 3's
262k-token vocabulary the layer is a third to a half of a CPU decoding step, nearly all of it
spent on tokens that cannot win. So an int8 copy of the weight (one scale per row) scores every token
first, in oneDNN's int8 GEMM (`torch.ops.onednn.qlinear_pointwise`, the kernel of torch's own x86
int8 path: a quarter of float32's bytes). The activation is quantised here, in two int8 passes
(the value, then what the first pass missed), so what the GEMM saw is known exactly, and each
token's exact logit lies within a bound of its int8 score:

    |w.x - w8.x8| <= |w| |x - x8| + |w - w8| |x8|      (Cauchy-Schwarz, per token)

Only tokens whose upper bound reaches the best token's lower bound can be the argmax; their
exact logits come from the layer's own weight, and the highest of them (the first on a tie, as
`argmax` does) is the answer. A row with too many such tokens (a near-flat distribution) is
computed whole. No approximation: the result is the layer's argmax up to float rounding, the same
tolerance as choosing between two float kernels. Where it pays is measured on the machine at hand
(once, cached in `<cache>/kernels.json`); `TJDKIT_ARGMAX=screen|full` forces it. The int8 copy
costs a quarter of the float32 weight's memory (168 MB for Gemma 3; an fp16-weights layer also keeps
its weight in float16, 335 MB, to gather exact rows from), built on first use (~3 s).

Sampling, a repetition penalty and soft-capped logits need the logits themselves and never come here.
"""

from __future__ import annotations

import functools
import os
import weakref
from typing import Optional

import torch
from torch import Tensor

from tjdkit.kernels.linear import interleaved_ms, output_layer
from tjdkit.kernels.store import machine_key, remembered_choice

STORE = "kernels.json"
CHOICES = ("screen", "full")
MEASURED_ROWS = (1, 4, 16)  # an ar step, a verify step at horizon 4, a token tree
MAX_CANDIDATES = 1 / 16  # of the vocabulary: a row with more candidates than this is computed whole
MIN_VOCAB = 4096  # smaller output layers are cheap whole
ROUNDING = 1e-4  # float rounding of both sides, relative to |w| |x|: far above float32's, far below the bound

_chosen: dict[str, str] = {}  # this process's choices, by key
_screens: "weakref.WeakKeyDictionary[torch.nn.Module, ArgmaxScreen]" = weakref.WeakKeyDictionary()


class ArgmaxScreen:
    """An output layer's int8 copy, with what the exact bound needs: per token, the norm of its
    weight row and of that row's int8 rounding error."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor] = None):
        """weight [V, D]: the layer's effective weights (float16 values for an fp16-weights layer)."""
        weight = weight.detach()
        self.exact = weight  # exact rows are gathered from this: float32, or float16 (exact in float32)
        self.bias = None if bias is None else bias.detach().float()
        full = weight.float()
        scale = full.abs().amax(dim=1).clamp(min=1e-30) / 127  # [V]
        codes = torch.round(full / scale[:, None]).clamp_(-127, 127)
        # float32 norms, rounded up by far more than their rounding error (the error rows are ~1/500 of |w|)
        self.error_norm = torch.linalg.vector_norm(full - codes * scale[:, None], dim=1) * (1 + 1e-3)  # [V]
        self.row_norm = torch.linalg.vector_norm(full, dim=1) * (1 + 1e-5)  # [V]
        self.max_error_norm, self.max_row_norm = float(self.error_norm.max()), float(self.row_norm.max())
        self.scale = scale
        self.packed = torch.ops.onednn.qlinear_prepack(codes.to(torch.int8), [1, weight.shape[1]])
        self.zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        self.vocab = weight.shape[0]
        self.signed_ok = _signed_activations_exact()
        self.version: tuple = ()

    def scores(self, x: Tensor) -> tuple[Tensor, float, Tensor, Tensor]:
        """x [n, D] float32 -> (int8 scores in units of `unit` [n, V], unit, |x - x8| [n], |x8| [n]),
        x8 being what the GEMM saw: the scores are exactly w8.x8 / unit, up to float rounding."""
        unit = float(x.abs().amax()) / 127 or 1.0  # the first pass's scale
        first = torch.round(x / unit).clamp(-127, 127)
        rest = x - first * unit
        second_scale = float(rest.abs().amax()) / 127 or 1.0
        second = torch.round(rest / second_scale).clamp(-127, 127)
        seen = first.double() * unit + second.double() * second_scale  # [n, D], x8
        missed = (x.double() - seen).norm(dim=1).float()
        codes = torch.cat([first, second])  # [2n, D], in [-127, 127]
        if self.signed_ok:
            raw = self._gemm(codes + 128, zero_point=128)
        else:  # a CPU whose int8 GEMM saturates u8 x s8 pairs: 7-bit halves, each sign apart
            raw = self._gemm(codes.clamp(min=0), zero_point=0) - self._gemm((-codes).clamp(min=0), zero_point=0)
        n = x.shape[0]
        scores = torch.add(raw[:n], raw[n:], alpha=second_scale / unit)  # [n, V], one pass
        if self.bias is not None:
            scores = scores + self.bias / unit
        return scores, unit, missed, seen.norm(dim=1).float()

    def _gemm(self, codes: Tensor, zero_point: int) -> Tensor:
        """codes [m, D] (uint8 range) -> (codes - zero_point) @ int8_weight^T * row scale, [m, V] float32."""
        return torch.ops.onednn.qlinear_pointwise(codes.to(torch.uint8), 1.0, zero_point, self.packed, self.scale,
                                                  self.zero_points, None, 1.0, 0, torch.float32, "none", [], "")

    def candidates(self, x: Tensor) -> list[Tensor]:
        """x [n, D] float32 -> per row, the tokens [k] (ascending) that may hold the exact maximum logit."""
        scores, unit, missed, seen = self.scores(x)
        reach = missed + ROUNDING * x.norm(dim=1)  # [n]: |x - x8| plus the rounding slack
        # the widest bound of any token, in score units: none of them is off by more
        widest = (self.max_row_norm * reach + self.max_error_norm * seen) / unit  # [n]
        top = scores.amax(dim=1)  # [n]; the exact maximum is at least top - widest
        rows, tokens = torch.nonzero(scores >= (top - 2 * widest)[:, None], as_tuple=True)
        found = []
        for row, picked in zip(range(x.shape[0]), tokens.split(torch.bincount(rows, minlength=x.shape[0]).tolist())):
            score = scores[row, picked]
            bound = (self.row_norm[picked] * reach[row] + self.error_norm[picked] * seen[row]) / unit
            floor = (score - bound).max() if picked.numel() else score.new_tensor(float("inf"))
            found.append(picked[score + bound >= floor])
        return found

    @torch.inference_mode()
    def argmax(self, hidden: Tensor, layer: Optional[torch.nn.Module] = None) -> list[int]:
        """hidden [n, D] -> each row's argmax over the layer's logits. `layer`: computes a row whole
        when too many tokens are candidates (the screen's own weights otherwise)."""
        x = hidden.float()
        tokens = []
        for row, found in enumerate(self.candidates(x)):
            if found.numel() == 0 or found.numel() > MAX_CANDIDATES * self.vocab:  # NaN, or a near-flat row
                tokens.append(int(self._whole(layer, x[row : row + 1]).argmax()))
                continue
            exact = self.exact.index_select(0, found).float() @ x[row]  # [k]
            if self.bias is not None:
                exact = exact + self.bias[found]
            tokens.append(int(found[int(exact.argmax())]))
        return tokens

    def _whole(self, layer, x: Tensor) -> Tensor:
        if layer is not None:
            return output_layer(layer, x).float()
        logits = x @ self.exact.float().T
        return logits + self.bias if self.bias is not None else logits


@functools.lru_cache(maxsize=1)
def _signed_activations_exact() -> bool:
    """Whether this CPU's int8 GEMM multiplies full-range uint8 by int8 without saturating (VNNI,
    AMX); without them a pair of products can overflow 16 bits and the scores would be wrong."""
    width = 64
    weight = torch.full((2, width), 127, dtype=torch.int8)
    weight[1] = -127
    packed = torch.ops.onednn.qlinear_prepack(weight, [1, width])
    codes = torch.full((1, width), 255, dtype=torch.uint8)
    out = torch.ops.onednn.qlinear_pointwise(codes, 1.0, 0, packed, torch.ones(2), torch.zeros(2, dtype=torch.long),
                                             None, 1.0, 0, torch.float32, "none", [], "")
    return out[0].tolist() == [255 * 127 * width, -255 * 127 * width]


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether torch has oneDNN's int8 GEMM here (x86 CPU builds)."""
    try:
        _signed_activations_exact()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def layer_kind(layer: torch.nn.Module) -> Optional[str]:
    """"float32" or "fp16-weights" for an output layer the screen can stand in for, else None."""
    if type(layer) is torch.nn.Linear:
        return "float32" if layer.weight.dtype == torch.float32 else None
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    if isinstance(layer, DynamicLinear) and layer._packed_params.dtype == torch.float16:
        return "fp16-weights"
    return None


def layer_weight(layer: torch.nn.Module) -> tuple[Tensor, Optional[Tensor]]:
    """(weight [V, D], bias) of a layer `layer_kind` accepts; an fp16-weights layer's weight in float16."""
    if type(layer) is torch.nn.Linear:
        return layer.weight, layer.bias
    weight, bias = layer._packed_params._weight_bias()  # unpacked: once, when the screen is built
    return weight.half(), bias


def screen_for(layer: torch.nn.Module) -> ArgmaxScreen:
    """The layer's screen, built once per layer (and again if its weight changes in place)."""
    screen = _screens.get(layer)
    version = _weight_version(layer)
    if screen is None or screen.version != version:
        screen = ArgmaxScreen(*layer_weight(layer))
        screen.version = version
        _screens[layer] = screen
    return screen


def _weight_version(layer) -> tuple:
    weight = getattr(layer, "weight", None)  # a method on an fp16-weights layer, whose weight never changes
    return (weight.data_ptr(), weight._version) if isinstance(weight, Tensor) else ()


def _forced() -> Optional[str]:
    forced = os.environ.get("TJDKIT_ARGMAX", "").strip().lower()
    return forced if forced in CHOICES else None


def uses_screen(layer: torch.nn.Module, device: torch.device) -> bool:
    """Whether greedy argmaxes of `layer` on `device` go through the screen: a CPU layer it can
    screen, a large vocabulary, measured faster here (or forced)."""
    if device.type != "cpu" or layer_kind(layer) is None:
        return False
    if _forced():
        return _forced() == "screen" and available()
    return layer.out_features >= MIN_VOCAB and choose(layer) == "screen"


def greedy_tokens(layer: torch.nn.Module, hidden: Tensor) -> list[int]:
    """hidden [n, D] -> the argmax token of each row of layer(hidden), by the faster exact path."""
    if uses_screen(layer, hidden.device):
        return screen_for(layer).argmax(hidden, layer)
    return output_layer(layer, hidden).argmax(dim=-1).tolist()


def choose(layer: torch.nn.Module) -> str:
    """"screen" or "full" for this layer: remembered, or measured now."""
    key = _key(layer)
    if key not in _chosen:
        _chosen[key] = remembered_choice(STORE, key, CHOICES, lambda: measure(layer) if available() else {"full": 0.0},
                                         MEASURED_ROWS)
        if _chosen[key] == "full":
            _screens.pop(layer, None)  # built to be measured, slower here: not kept in memory
    return _chosen[key]


def chosen(layer: torch.nn.Module) -> Optional[str]:
    """The choice this process made for `layer`, if any (for reports); never measures."""
    if layer_kind(layer) is None:
        return None
    return _forced() or _chosen.get(_key(layer))


def _key(layer) -> str:
    """What a measurement holds for: the CPU, threads, torch, the layer's format and shape."""
    return "|".join(["argmax", machine_key(), layer_kind(layer), f"{layer.out_features}x{layer.in_features}"])


@torch.inference_mode()
def measure(layer: torch.nn.Module, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per path (`interleaved_ms`, MEASURED_ROWS rows) on rows shaped like a confident
    decoding step: each a token's own weight row, so one token clearly leads. What a near-tie adds
    (its few exact rows, or a whole row) is rare and not counted."""
    screen = screen_for(layer)
    generator = torch.Generator().manual_seed(0)
    inputs = [screen.exact.index_select(0, torch.randint(screen.vocab, (rows,), generator=generator)).float() * 100.0
              for rows in MEASURED_ROWS]  # [rows, D] each
    paths = {
        "screen": lambda hidden: screen.argmax(hidden, layer),
        "full": lambda hidden: output_layer(layer, hidden).argmax(dim=-1).tolist(),
    }
    return interleaved_ms(paths, inputs, repeats)
