"""`--rank auto`: the smallest stored attention whose perplexity stays within a budget.

Energy thresholds spend rank evenly, but layers differ: on Gemma 3 270M some layers can lose
half their attention parameters for almost nothing while others break. So, per layer:

1. factorise that layer alone at a few candidate sizes (parameter compressions), lightest
   first, and measure how far it moves the model on calibration tokens (the other layers stay
   dense), up to the first size that alone costs more than the whole budget (on Gemma 3 270M
   most layers' lightest size already does, so the search runs a fraction of the trials): in
   `tjdkit factorize`, the KL from the dense model's next-token distributions
   (ShortlistDivergence), which predicted the held-out perplexity change of Gemma 3 270M's
   choice within 0.13 points where the trials' own perplexity change missed it by 3, taken at
   its 95% upper confidence bound, so that the budget holds on text the search never saw;
2. choose one option per layer (dense, or a candidate) minimising the stored parameters
   subject to the sum of the measured costs (KLs, or log-perplexity changes) staying within log(1 + P): a
   multiple-choice knapsack, solved exactly by dynamic programming over the budget in bins;
3. factorise the chosen combination and measure it. Changes do not add up exactly, so when the
   measured total is over budget, the search runs again with a tighter budget (a few times), and
   when nothing fits every layer stays dense.

Candidates are truncations of one HOSVD per layer (the same SVDs `tucker_layer` takes), so
measuring five sizes costs one decomposition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from tjdkit.errors import TjdkitError
from tjdkit.factorize.budget import compression_ranks, factorized_num_parameters
from tjdkit.factorize.specs import Rank
from tjdkit.factorize.tucker import (
    PROJECTIONS,
    TuckerAttention,
    attention_shape,
    attention_tensor,
    dense_num_parameters,
    materialize,
    scale_dmodel,
)

# Parameter compressions tried per layer: from barely smaller than dense to a quarter.
CANDIDATE_FACTORS = (1.05, 1.1, 1.2, 1.5, 2.0, 3.0)
BUDGET_BINS = 400  # the knapsack's resolution: 1/400 of the budget
RETRIES = 4  # tighter budgets tried when a combination measures over budget
TIGHTEN = 0.6
BLOCKS = 8  # contiguous blocks of positions whose mean KLs give the bound's spread
T_95 = 1.895  # one-sided 95% quantile of Student's t with BLOCKS - 1 = 7 degrees of freedom


@dataclass
class Option:
    """One way to store a layer: its Tucker ranks (None: dense), size and measured cost."""

    ranks: Optional[Rank]
    parameters: int
    log_ppl_increase: float  # log(trial score with only this layer changed / dense score): a KL, or a log ppl ratio


@dataclass
class LayerCurve:
    layer: int
    dense_parameters: int
    options: list[Option] = field(default_factory=list)  # dense first, then smaller candidates


@dataclass
class BudgetChoice:
    """The outcome: ranks per layer (None: stays dense) and the measured combination."""

    ranks: dict[int, Optional[Rank]]
    curves: dict[int, LayerCurve]
    dense_perplexity: float
    perplexity: float  # of the chosen combination, on the same calibration tokens
    budget: float  # the allowed relative increase, e.g. 0.01
    attempts: int

    @property
    def increase(self) -> float:
        return self.perplexity / self.dense_perplexity - 1.0

    @property
    def fits(self) -> bool:
        return any(r is not None for r in self.ranks.values())


def hosvd_factors(data: Tensor) -> list[Tensor]:
    """The full left singular vectors of the d_model, head_dim and role unfoldings of `data`."""
    import tensorly as tl

    from tjdkit.factorize.rank import gram_svd

    with tl.backend_context("pytorch"):
        return [gram_svd(tl.unfold(data, mode))[0] for mode in range(3)]


def truncated_tucker(data: Tensor, factors: Sequence[Tensor], ranks: Rank, input_scale: Optional[Tensor]) -> TuckerAttention:
    """The truncated HOSVD of `data` (already scaled) at `ranks`: what `tucker_layer` returns."""
    u = [f[:, :r] for f, r in zip(factors, ranks)]
    core = torch.einsum("mnrh,ma,nb,rc->abch", data, *u)  # [R1, R2, R3, heads]
    u_dmodel = u[0] if input_scale is None else u[0] / input_scale.to(u[0])[:, None]
    return TuckerAttention(core=core, u_dmodel=u_dmodel, u_headdim=u[1], u_role=u[2])


def _bins(cost: float, budget: float, bins: int) -> int:
    """Bins a cost takes, rounded up; gains (cost < 0) count as free, never as credit."""
    return 0 if cost <= 0 else math.ceil(cost / budget * bins - 1e-9)


def choose_options(curves: Sequence[LayerCurve], budget: float, bins: int = BUDGET_BINS) -> list[Option]:
    """Per curve one option, minimising total parameters with sum(max(cost, 0)) <= budget.

    Exact multiple-choice knapsack on costs rounded UP to 1/bins of the budget (so a chosen set
    never exceeds the budget by rounding). Dense costs 0, so a solution always exists.
    """
    if budget <= 0:
        return [curve.options[0] for curve in curves]
    infinity = float("inf")
    best = [0.0] + [infinity] * bins  # best[b]: fewest parameters using exactly b bins so far
    picks: list[list[int]] = []  # per curve, per bin: the option index chosen
    for curve in curves:
        new = [infinity] * (bins + 1)
        pick = [-1] * (bins + 1)
        for index, option in enumerate(curve.options):
            need = _bins(option.log_ppl_increase, budget, bins)
            if need > bins:
                continue
            for b in range(bins - need + 1):
                if best[b] == infinity:
                    continue
                total = best[b] + option.parameters
                if total < new[b + need]:
                    new[b + need] = total
                    pick[b + need] = index
        picks.append(pick)  # the bin before is b - need(option), so the path can be walked back
        best = new
    end = min(range(bins + 1), key=lambda b: best[b])
    chosen: list[Option] = []
    for curve, pick in zip(reversed(list(curves)), reversed(picks)):
        index = pick[end]
        option = curve.options[index]
        chosen.append(option)
        end -= _bins(option.log_ppl_increase, budget, bins)
    return list(reversed(chosen))


class ShortlistPerplexity:
    """Perplexity with the softmax taken over a shortlist of the vocabulary, for the many trials.

    Built once from the dense model on `ids` [1, n]: the shortlist is every token in any position's
    top `k` plus every target. A trial then costs the backbone alone (Gemma 3's 262k-token output
    layer is most of a forward on 512 tokens); the shortlist holds nearly all of the probability
    mass, and the same shortlist serves every trial, so differences between trials are what it
    measures well. The chosen combination is then checked with the exact perplexity.
    """

    def __init__(self, model: nn.Module, ids: Tensor, k: int = 64, chunk: int = 128):
        from tjdkit.decoding.forward import output_logits, soft_cap_value

        with torch.no_grad():
            hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]  # [n-1, D]
            targets = ids[0, 1:].to(hidden.device)
            chosen = [targets]
            for start in range(0, hidden.shape[0], chunk):
                logits = output_logits(model, hidden[start : start + chunk])  # [c, V]
                chosen.append(logits.topk(min(k, logits.shape[-1]), dim=-1).indices.flatten())
            vocab = torch.unique(torch.cat(chosen))  # sorted: [U]
            self.weight = model.get_output_embeddings().weight[vocab].detach().float()  # [U, D]
            self.target_index = torch.searchsorted(vocab, targets)  # [n-1]
        self.cap = soft_cap_value(model)
        self.size = int(vocab.numel())

    @torch.no_grad()
    def shortlist_logits(self, model: nn.Module, ids: Tensor) -> Tensor:
        """`model`'s logits over the shortlist at every position but the last: [n-1, U], soft-capped."""
        from tjdkit.decoding.forward import apply_soft_cap

        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1].float()  # [n-1, D]
        return apply_soft_cap(hidden @ self.weight.T, self.cap)

    def __call__(self, model: nn.Module, ids: Tensor) -> float:
        logits = self.shortlist_logits(model, ids)  # [n-1, U]
        nll = torch.logsumexp(logits, dim=-1) - logits.gather(1, self.target_index[:, None])[:, 0]
        return float(torch.exp(nll.double().mean()))


class ShortlistDivergence(ShortlistPerplexity):
    """Trials scored by how far they move the dense model's predictions: KL(dense || trial) per token
    over the shortlist, returned as exp(dense NLL + KL), so that a trial's log ratio to the dense
    score (the knapsack's cost) is its KL; with `bound`, the one-sided 95% upper confidence bound of
    that KL instead of its mean.

    Why not the trial's own perplexity: on 512 tokens a perplexity change rests on one target per
    position, and it measured about zero, or below zero, for layers whose attention lost a third of
    its norm; the knapsack then spent exactly that luck (+0.1% measured, +3.3% on held-out text). The
    KL reads each position's whole distribution, is never negative, and is what the next-token NLL
    rises by, in expectation, on text the dense model would write.

    Why a bound: the knapsack fills the budget with the options whose KL on the calibration tokens
    happened to be lowest, so means that sum to just under the budget land just over it on other
    text (Gemma 3 270M: +0.91% predicted, +1.04% held-out). The bound's spread comes from the means
    of BLOCKS contiguous blocks of positions, because neighbouring positions' KLs are not
    independent."""

    def __init__(self, model: nn.Module, ids: Tensor, k: int = 64, chunk: int = 128, bound: bool = True):
        super().__init__(model, ids, k, chunk)
        self.dense_log_probs = torch.log_softmax(self.shortlist_logits(model, ids), dim=-1)  # [n-1, U]
        dense_nll = -self.dense_log_probs.gather(1, self.target_index[:, None])[:, 0]
        self.dense_nll = float(dense_nll.double().mean())
        self.bound = bound

    def __call__(self, model: nn.Module, ids: Tensor) -> float:
        log_q = torch.log_softmax(self.shortlist_logits(model, ids), dim=-1)
        kl = (self.dense_log_probs.exp() * (self.dense_log_probs - log_q)).sum(-1).double()  # [n-1]
        return math.exp(self.dense_nll + (kl_upper_bound(kl) if self.bound else float(kl.mean())))


def kl_upper_bound(kl: Tensor) -> float:
    """One-sided 95% upper confidence bound of the mean of per-position KLs `kl` [n]: the mean plus
    t(0.95, 7) standard errors of the means of 8 contiguous blocks (the positions a block count
    does not divide are left out of the spread, not of the mean)."""
    size = kl.numel() // BLOCKS
    if size == 0:
        return float(kl.mean())
    means = kl[: size * BLOCKS].view(BLOCKS, size).mean(dim=1)
    return float(kl.mean() + T_95 * means.std() / math.sqrt(BLOCKS))


class _LayerWeights:
    """One attention layer's original q/k/v/o weights, to put back after a trial."""

    def __init__(self, attn: nn.Module):
        self.attn = attn
        self.saved = {name: getattr(attn, name).weight.detach().clone() for name in PROJECTIONS}

    def restore(self) -> None:
        with torch.no_grad():
            for name, weight in self.saved.items():
                getattr(self.attn, name).weight.copy_(weight)


def search_ranks(
    model: nn.Module,
    layers: nn.ModuleList,
    chosen: Sequence[int],
    scales: dict[int, Optional[Tensor]],
    ids: Tensor,
    max_increase: float,
    perplexity: Callable[[nn.Module, Tensor], float],
    factors: Sequence[float] = CANDIDATE_FACTORS,
    on_stage: Optional[Callable[[str], None]] = None,
    trial_perplexity: Optional[Callable[[nn.Module, Tensor], float]] = None,
    check_ids: Optional[Tensor] = None,
) -> BudgetChoice:
    """Measure each layer's sensitivity on `ids`, solve the knapsack, verify; the model is left dense.

    scales: per layer the activation scale (None: data-free). max_increase: e.g. 0.01 for 1%.
    trial_perplexity: a cheaper measure for the per-layer trials (e.g. ShortlistPerplexity);
    the budget is always checked with `perplexity`. check_ids: other tokens for that check (default
    `ids`): the knapsack favours options whose trial happened to measure low, and tokens it never
    saw do not share that luck.
    """
    if not max_increase > 0:
        raise TjdkitError(f"--max-ppl-increase must be above 0, got {max_increase * 100:g}%")
    config = model.config
    check_ids = ids if check_ids is None else check_ids
    dense_ppl = perplexity(model, check_ids)
    trial = trial_perplexity or perplexity
    trial_dense = trial(model, ids)
    budget = math.log1p(max_increase)
    saved = {index: _LayerWeights(layers[index].self_attn) for index in chosen}
    tuckers: dict[tuple[int, Rank], TuckerAttention] = {}
    curves: dict[int, LayerCurve] = {}
    try:
        for position, index in enumerate(chosen):
            on_stage and on_stage(f"sensitivity of layer {index} ({position + 1}/{len(chosen)})")
            attn = layers[index].self_attn
            shape = attention_shape(attn, config)
            tensor = attention_tensor(attn, config).float()
            data = scale_dmodel(tensor, scales.get(index))
            hosvd = hosvd_factors(data)
            dense = dense_num_parameters(shape)
            curve = LayerCurve(index, dense, [Option(None, dense, 0.0)])
            seen: set[Rank] = set()
            for factor in sorted(factors):
                try:
                    ranks = compression_ranks(shape, factor)
                except TjdkitError:
                    continue
                if ranks in seen:
                    continue
                seen.add(ranks)
                tucker = truncated_tucker(data, hosvd, ranks, scales.get(index))
                materialize(attn, config, tucker.reconstruct())
                ppl = trial(model, ids)
                saved[index].restore()
                tuckers[(index, ranks)] = tucker
                parameters = factorized_num_parameters(shape, ranks[0], ranks[1])
                curve.options.append(Option(ranks, parameters, math.log(ppl / trial_dense)))
                if curve.options[-1].log_ppl_increase > budget:
                    break  # alone over the budget: the smaller sizes, cut from the same HOSVD, cannot fit either
            curves[index] = curve

        ordered = [curves[index] for index in chosen]
        result: dict[int, Optional[Rank]] = {index: None for index in chosen}
        measured = dense_ppl
        attempts = 0
        for attempts in range(1, RETRIES + 1):
            picked = choose_options(ordered, budget)
            result = {curve.layer: option.ranks for curve, option in zip(ordered, picked)}
            if all(r is None for r in result.values()):
                measured = dense_ppl
                break
            on_stage and on_stage(f"checking the chosen ranks (try {attempts})")
            for index, ranks in result.items():
                if ranks is not None:
                    materialize(layers[index].self_attn, config, tuckers[(index, ranks)].reconstruct())
            measured = perplexity(model, check_ids)
            for index in chosen:
                saved[index].restore()
            if measured / dense_ppl - 1.0 <= max_increase:
                break
            budget *= TIGHTEN
        else:
            result = {index: None for index in chosen}
            measured = dense_ppl
    finally:
        for weights in saved.values():
            weights.restore()
    return BudgetChoice(result, curves, dense_ppl, measured, max_increase, attempts)
