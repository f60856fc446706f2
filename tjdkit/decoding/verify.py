"""Lossless speculative decoding: each forward feeds [the last chosen token x, then the drafts];
its logits verify the drafts and its hidden states feed the next draft.

Drafts come from the joint head or from prompt lookup (tjdkit.decoding.drafters). The head
drafts from the hidden state that predicted x, *conditioned on x* (`head.draft(first=x)`):
its first position is already decided by the verifier, so a head of horizon H offers H-1
drafts. Lookup offers the tokens that followed the context's last n-gram where it occurred
before, as many as pay on this machine: the length that maximises expected tokens per second
under the measured costs of the layers and of the output layer, and the acceptance seen so far
at each draft position, kept apart for 1- and 2-token matches (tjdkit.decoding.costs). The output layer runs lazily, in chunks, on
the rows acceptance reaches: on a large vocabulary it costs more than the layers, and the rows
after the first rejected draft are never read.

The hybrid drafter chooses each step, by the same measure (each drafter's acceptance in this
generation so far, the measured forward costs), between the copy, the head's drafts, and,
in greedy decoding, both at once: a two-branch token tree (x then the copy; x then the head's
drafts) verified in one forward as a batch of two rows over the shared KV cache
(transformers' `batch_repeat_interleave`); the branch with more accepted drafts is kept
(`batch_select_indices`). Greedy: the drafts are accepted while they equal the model's argmax,
then the model's own token follows (output identical to `ar`). Sampling: the
speculative-sampling rule (accept with min(1, p/q), else resample from max(0, p - q)
normalised; all accepted: a bonus token from p), with q the head's conditionals or, for a
lookup draft, a point mass on it; so tokens follow the model's own distribution. Rejected
drafts are cropped off the KV cache (sliding-window layers record their past for that).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tjdkit.decoding.costs import (
    AcceptanceProfile,
    best_draft_length,
    best_first_chunk,
    expected_output_ms,
    expected_rate,
    expected_tokens,
    forward_costs,
)
from tjdkit.decoding.drafters import LOOKUP_NGRAM, MAX_LOOKUP_TOKENS, lookup_match
from tjdkit.decoding.forward import LazyLogits, hidden_and_logits, hidden_states, new_cache
from tjdkit.decoding.sampling import Sampling, penalty_context


def verify(model, head, ids, max_new_tokens, eos, sampling, generator, stats, emit, drafter="head") -> list[int]:
    """Speculative decoding: one forward per step verifies the last drafts and feeds the next.
    drafter: "head", "lookup", or "hybrid" (per step: the copy, the head's drafts, or both as a tree)."""
    device = ids.device
    context = ids[0].tolist()  # the prompt, then every chosen token: what lookup searches
    costs = forward_costs(model) if drafter != "head" else None  # ms of the layers and the output layer, measured once
    # how far lookup's copies hold up in this generation, by draft position, apart for 1- and 2-token matches
    lookup_rates = {n: AcceptanceProfile() for n in range(1, LOOKUP_NGRAM + 1)}
    lookup_rate = lookup_rates[LOOKUP_NGRAM]
    head_rate = AcceptanceProfile()  # and the head's drafts
    head_usable = drafter != "lookup" and head is not None and head.horizon > 1
    cache = new_cache(model)
    tree_ok = sampling.greedy and hasattr(cache, "batch_repeat_interleave")  # two branches as two batch rows
    hidden, logits = hidden_and_logits(model, ids, cache, last_only=True)  # prefill: [T, D], [1, V]
    stats.forwards += 1
    cache.activate_past_recording()  # after the prefill: sliding-window layers keep what a rollback needs
    token = sampling.pick(sampling.penalise(logits[-1], ids[0]), generator)  # the first new token, the model's own
    state = hidden[-1:]  # [1, D]: the hidden state that predicted `token`
    out = [token]
    emit([token])

    while token not in eos and len(out) < max_new_tokens:
        room = max_new_tokens - len(out)  # tokens this step may add: accepted drafts + the model's own
        first = torch.tensor([token], device=device)
        copy: list[int] = []
        seen = context + out
        match = lookup_match(seen) if drafter != "head" and room > 1 else None
        if match:
            lookup_rate = lookup_rates[match[0]]
            limit = best_draft_length(costs, lookup_rate.reach, min(MAX_LOOKUP_TOKENS, room - 1))
            copy = seen[match[1] : match[1] + limit]
        can_draft = head_usable and room > 1 and bool(head.in_vocab(first).all())
        head_drafts = min(head.horizon - 1, room - 1) if can_draft else 0
        plan = _plan(costs, copy, can_draft, head_drafts, lookup_rate.reach, head_rate.reach, tree_ok)
        branches: list[list[int]] = []  # each: the drafts after `token`; [0] the copy when there is one
        q = None  # [n, V]: the head's conditionals its drafts were drawn from (sampling); a copy is a point mass
        if plan in ("lookup", "tree"):
            branches.append(copy)
        if plan in ("head", "tree"):
            drafted, q_all = head.draft(
                state,
                greedy=sampling.greedy,
                temperature=sampling.temperature or 1.0,
                generator=generator,
                first=first,
                conditionals=not sampling.greedy,  # greedy acceptance compares tokens only
            )
            branches.append(drafted[0, 1 : 1 + head_drafts].tolist())
            q = q_all[0, 1 : 1 + head_drafts].to(device) if q_all is not None else None
        if plan == "tree" and branches[0][: len(branches[1])] == branches[1]:
            plan, branches = "lookup", branches[:1]  # the head agrees with the copy: one branch holds both
        if not branches:
            branches = [[]]
        stats.lookup_steps += plan in ("lookup", "tree")
        stats.tree_steps += plan == "tree"

        if plan == "tree":
            firsts = [best_first_chunk(costs, rate.reach, 1 + len(branch))
                      for rate, branch in zip((lookup_rate, head_rate), branches)]
            kept, new, accepted, hidden, both, rows = _verify_tree(model, cache, token, branches, firsts, ids, out, eos,
                                                                   sampling)
            drafts = branches[kept]
            looked_up = kept == 0
            if both[1 - kept] is not None:  # the other branch, when it was read
                (head_rate if looked_up else lookup_rate).update(both[1 - kept], len(branches[1 - kept]))
        else:
            drafts = branches[0]
            looked_up = plan == "lookup"
            feed = torch.tensor([[token] + drafts], dtype=ids.dtype, device=device)  # [1, 1 + n]
            hidden = hidden_states(model, feed, cache)  # row j predicts the token after feed[j]
            rate = lookup_rate if looked_up else head_rate
            rows = 1 + len(drafts)
            logits = LazyLogits(model, hidden, best_first_chunk(costs, rate.reach, rows) if costs else rows)
            new, accepted = _accept(logits, drafts, None if looked_up else q, ids, out, eos, sampling, generator)
            rows = logits.computed
            cache.crop(-(len(drafts) - accepted))  # drop rejected drafts; crop(0) trims sliding windows
        stats.output_rows += rows
        stats.forwards += 1
        (lookup_rate if looked_up else head_rate).update(accepted, len(drafts))
        stats.accepted.append(accepted)
        stats.offered.append(len(drafts))
        state = hidden[accepted : accepted + 1]  # [1, D]: predicted new[-1]
        out += new
        emit(new)
        token = new[-1]
    return out


def _plan(costs, copy: list[int], can_draft: bool, head_drafts: int, lookup_reach: list[float],
          head_reach: list[float], tree_ok: bool) -> str:
    """This step's drafts: "lookup", "head", "tree" (both, two batch rows) or "none", whichever
    promises the most tokens per millisecond (tjdkit.decoding.costs); the copy when there are no costs."""
    if not copy:
        return "head" if can_draft else "none"
    if not can_draft:
        return "lookup"
    rates = {
        "lookup": expected_rate(costs, lookup_reach, len(copy)),
        "head": expected_rate(costs, head_reach, head_drafts),
    }
    if tree_ok:
        # the copy's tokens, plus the head's where the copy fails at its first draft; a batch of two rows
        # of 1 + m tokens costs about the layers on 2 (1 + m) tokens, and each row's output chunks
        width = 1 + max(len(copy), head_drafts)
        tokens = expected_tokens(lookup_reach, len(copy)) + (1 - lookup_reach[1]) * (expected_tokens(head_reach, head_drafts) - 1)
        ms = costs.layers_ms(2 * width) + sum(
            expected_output_ms(costs, reach, 1 + drafts, best_first_chunk(costs, reach, 1 + drafts))
            for reach, drafts in ((lookup_reach, len(copy)), (head_reach, head_drafts))
        )
        rates["tree"] = tokens / ms
    return max(rates, key=rates.get)  # a tie keeps the copy


def _accept(logits: Tensor, drafts: list[int], q: Optional[Tensor], ids, out: list[int], eos, sampling: Sampling,
            generator) -> tuple[list[int], int]:
    """The drafts the model accepts, then its own token -> (new tokens, accepted drafts).
    logits [1 + n, V]: row j predicts the token after the j-th fed token. q: the head's
    conditionals [n, V] (sampling), None for a copy (a point mass)."""
    new: list[int] = []
    for j, draft in enumerate(drafts):
        row = sampling.penalise(logits[j], penalty_context(ids, out + new))
        if sampling.greedy:
            ok = int(row.argmax()) == draft
        else:
            u = float(torch.rand((), generator=generator))
            q_draft = float(q[j, draft]) if q is not None else 1.0  # a lookup draft: q is a point mass on it
            ok = u * q_draft < float(sampling.probs(row)[draft])  # u < min(1, p/q)
        if not ok:
            break
        new.append(draft)
        if draft in eos:
            break
    accepted = len(new)
    if not (new and new[-1] in eos):
        row = sampling.penalise(logits[accepted], penalty_context(ids, out + new))
        rejected_q = None
        if accepted < len(drafts):  # the draft at `accepted` was rejected: resample from the residual
            rejected_q = q[accepted] if q is not None else _point_mass(drafts[accepted], row)
        new.append(_model_token(row, rejected_q, sampling, generator))
    return new, accepted


def _verify_tree(model, cache, token: int, branches: list[list[int]], firsts: list[int], ids, out: list[int], eos,
                 sampling: Sampling):
    """Greedy verification of two branches after `token` in one forward: the cache is repeated to two
    batch rows, each row feeds [token, its drafts] (the shorter padded at its end, where nothing
    attends to the padding), and the row with more accepted drafts is kept, its rejected drafts and
    padding cropped. The copy's row is read first; the head's only if it could accept more.
    firsts: each row's first output chunk. -> (kept branch, new tokens, accepted drafts, that
    row's hidden states [1 + m, D], the drafts each branch accepted (None: not read), output rows computed)."""
    width = 1 + max(len(branch) for branch in branches)
    rows = [[token] + branch + [token] * (width - 1 - len(branch)) for branch in branches]
    cache.batch_repeat_interleave(len(rows))
    feed = torch.tensor(rows, dtype=ids.dtype, device=ids.device)  # [2, 1 + m]
    hidden = model.base_model(input_ids=feed, cache=cache, use_cache=True).last_hidden_state  # [2, 1 + m, D]
    results, computed = [], 0
    for index, branch in enumerate(branches):
        if index and results[0][1] >= len(branch):  # this branch cannot beat the one read (a tie keeps the copy)
            results.append(None)
            continue
        logits = LazyLogits(model, hidden[index, : 1 + len(branch)], firsts[index])
        results.append(_accept(logits, branch, None, ids, out, eos, sampling, None))
        computed += logits.computed
    kept = max((index for index, result in enumerate(results) if result is not None), key=lambda index: results[index][1])
    cache.batch_select_indices(torch.tensor([kept], device=ids.device))
    new, accepted = results[kept]
    cache.crop(-(width - 1 - accepted))  # the kept row's rejected drafts and padding
    return kept, new, accepted, hidden[kept], [None if result is None else result[1] for result in results], computed


def _point_mass(token: int, like: Tensor) -> Tensor:
    """q of a deterministic draft: all mass on `token` ([V], like the logits row)."""
    return torch.zeros_like(like, dtype=torch.float32).index_fill_(0, torch.tensor([token], device=like.device), 1.0)


def _model_token(logits: Tensor, q: Optional[Tensor], sampling: Sampling, generator) -> int:
    """The model's token after the accepted drafts: argmax; or a sample from p, or from the
    residual max(0, p - q) normalised when the draft drawn from q was rejected."""
    if sampling.greedy:
        return int(logits.argmax())
    p = sampling.probs(logits)
    if q is not None:
        residual = (p - q).clamp(min=0)
        total = float(residual.sum())
        if total > 0:  # == 0 only when p == q, where a rejection cannot happen
            p = residual / total
    return int(torch.multinomial(p, 1, generator=generator))


