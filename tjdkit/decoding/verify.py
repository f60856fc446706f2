"""Lossless speculative decoding: each forward feeds [the last chosen token x, then the drafts];
its logits verify the drafts and its hidden states feed the next draft.

Drafts come from the joint head or from prompt lookup (tjdkit.decoding.drafters). The head
drafts from the hidden state that predicted x, *conditioned on x* (`head.draft(first=x)`):
its first position is already decided by the verifier, so a head of horizon H offers H-1
drafts. Lookup offers the tokens that followed the context's last n-gram (the longest, up to 4
tokens) where it first occurred before, as many as pay on this machine: the length that
maximises expected tokens per second under the measured costs of the layers and of the output
layer, and the acceptance seen so far at each draft position, kept apart for 1-token and longer
matches (tjdkit.decoding.costs). The output layer runs lazily, in chunks, on the rows
acceptance reaches: on a large vocabulary it costs more than the layers, and the rows
after the first rejected draft are never read.

Each step chooses, by the same measure (each drafter's acceptance in this generation so far,
the measured forward costs), between the copy, the head's drafts, and, in greedy decoding, a
token tree verified in one forward (tjdkit.decoding.tree): the copy and the head's drafts as
branches, plus the head's next-best first drafts, each continued by the head, as many as the
cost of a wider forward on this machine pays for (a CPU's forward of 8 tokens can cost little
more than one of 4; on another format or machine it does not). The cache keeps the accepted
path. Greedy: the drafts are accepted while they equal the model's argmax,
then the model's own token follows (output identical to `ar`). Sampling: the
speculative-sampling rule (accept with min(1, p/q), else resample from max(0, p - q)
normalised; all accepted: a bonus token from p), with q the head's conditionals or, for a
lookup draft, a point mass on it; so tokens follow the model's own distribution. Rejected
drafts are cropped off the KV cache (sliding-window layers record their past for that).
"""

from __future__ import annotations

import time
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
from tjdkit.decoding.drafters import MAX_LOOKUP_TOKENS, VERIFY_NGRAM, TailIndex
from tjdkit.decoding.forward import LazyLogits, greedy_tokens, hidden_states, new_cache, next_hidden, output_logits
from tjdkit.decoding.sampling import Sampling, penalty_context
from tjdkit.decoding.tree import TokenTree, branch_match, tree_supported, verify_tree


MAX_ALTERNATIVES = 4  # the head's next-best first drafts a token tree may add, each continued by the head
ALTERNATIVE_WEIGHT = 4.0  # the head's own probability for an alternative counts as this many measured tries


def verify(model, head, ids, max_new_tokens, eos, sampling, generator, stats, emit, drafter="head") -> list[int]:
    """Speculative decoding: one forward per step verifies the last drafts and feeds the next.
    drafter: "head", "lookup", or "hybrid" (per step: the copy, the head's drafts, or both as a tree)."""
    device = ids.device
    seen = TailIndex(VERIFY_NGRAM, ids[0].tolist())  # the prompt, then every chosen token: what lookup searches
    cache = new_cache(model)
    head_usable = drafter != "lookup" and head is not None and head.horizon > 1
    tree_ok = sampling.greedy and tree_supported(model, cache)  # several branches in one forward (greedy)
    costs = forward_costs(model, sampling.argmax_only) if drafter != "head" or tree_ok else None  # ms of the layers and the output layer
    # how far lookup's copies hold up in this generation, by draft position, apart for 1-token and longer matches
    lookup_rates = {1: AcceptanceProfile(), 2: AcceptanceProfile()}  # 1-token matches; 2 or more (one profile learns faster)
    lookup_rate = lookup_rates[2]
    head_rate = AcceptanceProfile()  # the head's greedy drafts
    alternative_tries = [[0, 0] for _ in range(MAX_ALTERNATIVES)]  # the head's k-th next-best: [held, tried]
    draft_ms = 0.0  # the head's drafting time for one row, as timed in this generation: each alternative adds one
    state = next_hidden(model, ids, cache)  # the prefill: [1, D], the hidden state that predicts `token`
    stats.forwards += 1
    cache.activate_past_recording()  # after the prefill: sliding-window layers keep what a rollback needs
    if sampling.argmax_only:
        token = greedy_tokens(model, state)[0]  # the first new token, the model's own
    else:
        token = sampling.pick(sampling.penalise(output_logits(model, state)[-1], ids[0]), generator)
    out = [token]
    seen.extend(out)
    emit([token])

    while token not in eos and len(out) < max_new_tokens:
        room = max_new_tokens - len(out)  # tokens this step may add: accepted drafts + the model's own
        first = torch.tensor([token], device=device)
        copy: list[int] = []
        match = seen.match() if drafter != "head" and room > 1 else None
        if match:
            lookup_rate = lookup_rates[min(match[0], 2)]
            limit = best_draft_length(costs, lookup_rate.reach, min(MAX_LOOKUP_TOKENS, room - 1))
            copy = seen.tokens[match[1] : match[1] + limit]
        can_draft = head_usable and room > 1 and bool(head.in_vocab(first).all())
        head_drafts = min(head.horizon - 1, room - 1) if can_draft else 0
        plan, _ = _plan(costs, copy, head_drafts, lookup_rate.reach, head_rate.reach, [], tree_ok, draft_ms,
                        plain_ok=drafter == "hybrid")
        widen = tree_ok and MAX_ALTERNATIVES > 0 and plan in ("head", "tree")  # may the head's next-best join?
        branches: list[list[int]] = []  # the drafts after `token`: the copy first when there is one
        alternatives: list[list[int]] = []  # the head's branches from its next-best first drafts
        greedy_branch: list[int] = []
        q = None  # [n, V]: the head's conditionals its drafts were drawn from (sampling); a copy is a point mass
        if plan in ("lookup", "tree"):
            branches.append(copy)
        if plan in ("head", "tree"):
            started = time.perf_counter()
            if widen:  # greedy: the drafts, and the head's next-best tokens at each position for other branches
                drafted, next_ids, next_probs = head.draft_next_best(state, first, MAX_ALTERNATIVES + 1)
            else:
                drafted, q_all = head.draft(state, greedy=sampling.greedy, temperature=sampling.temperature or 1.0,
                                            generator=generator, first=first,
                                            conditionals=not sampling.greedy)  # greedy acceptance compares tokens only
                if q_all is not None:
                    q = q_all[0, 1 : 1 + head_drafts].to(device)
            greedy_branch = drafted[0, 1 : 1 + head_drafts].tolist()
            elapsed = 1000 * (time.perf_counter() - started)
            draft_ms = elapsed if not draft_ms else 0.8 * draft_ms + 0.2 * elapsed  # a running mean
            branches.append(greedy_branch)
            if widen:
                def width_for(chances: list[float]) -> int:  # the plan's kind, now with the alternatives' chances
                    return _plan(costs, copy if plan == "tree" else [], head_drafts, lookup_rate.reach,
                                 head_rate.reach, chances, tree_ok, draft_ms, kind=plan)[1]

                alternatives = _next_best_branches(head, state, token, greedy_branch, next_ids[0, 1], next_probs[0, 1],
                                                   alternative_tries, width_for)
                branches += alternatives
        if not branches:
            branches = [[]]
        looked_up = plan in ("lookup", "tree")
        stats.lookup_steps += looked_up
        tree = TokenTree(token, branches) if len(branches) > 1 else None
        if tree is not None and len(tree) == 1 + len(branches[0]):  # every branch lies along the first
            tree, branches = None, branches[:1]
        stats.tree_steps += tree is not None

        if tree is not None:
            reach = lookup_rate.reach if looked_up else head_rate.reach
            first_chunk = best_first_chunk(costs, reach, 1 + max(len(branch) for branch in branches))
            new, path, kept_hidden, rows = verify_tree(model, cache, tree, first_chunk, ids, out, eos, sampling)
            accepted = len(path) - 1
            if looked_up:
                lookup_rate.update(branch_match(copy, new), len(copy))
            if greedy_branch:
                head_rate.update(branch_match(greedy_branch, new), len(greedy_branch))
            for tries, branch in zip(alternative_tries, alternatives):
                tries[0] += branch_match(branch, new) > 0
                tries[1] += 1
            state = kept_hidden[-1:]  # [1, D]: predicted new[-1]
            stats.offered.append(max(len(branch) for branch in branches))
        else:
            drafts = branches[0]
            feed = torch.tensor([[token] + drafts], dtype=ids.dtype, device=device)  # [1, 1 + n]
            hidden = hidden_states(model, feed, cache)  # row j predicts the token after feed[j]
            rate = lookup_rate if looked_up else head_rate
            rows = 1 + len(drafts)
            logits = LazyLogits(model, hidden, best_first_chunk(costs, rate.reach, rows) if costs else rows)
            new, accepted = _accept(logits, drafts, None if looked_up else q, ids, out, eos, sampling, generator)
            rows = logits.computed
            cache.crop(-(len(drafts) - accepted))  # drop rejected drafts; crop(0) trims sliding windows
            rate.update(accepted, len(drafts))
            state = hidden[accepted : accepted + 1]  # [1, D]: predicted new[-1]
            stats.offered.append(len(drafts))
        stats.output_rows += rows
        stats.forwards += 1
        stats.accepted.append(accepted)
        out += new
        seen.extend(new)
        emit(new)
        token = new[-1]
    return out


def _next_best_branches(head, state, token: int, greedy_branch: list[int], next_ids: Tensor, next_probs: Tensor,
                        tries: list[list[int]], width_for) -> list[list[int]]:
    """The token tree's extra branches: the head's next-best first drafts (`next_ids`, `next_probs` [k], best
    first), as many as `width_for(chances)` says pay, each continued by the head. A next-best draft's chance
    is the head's own probability for it, corrected by how often the k-th next-best has held in this
    generation (`tries`: [held, tried] per rank, as ALTERNATIVE_WEIGHT tries of prior)."""
    starts = [(token_id, p) for token_id, p in zip(next_ids.tolist(), next_probs.tolist())
              if token_id != greedy_branch[0] and p > 0]
    chances = [(held + ALTERNATIVE_WEIGHT * p) / (tried + ALTERNATIVE_WEIGHT) for (held, tried), (_, p) in zip(tries, starts)]
    width = width_for(chances)
    return _alternatives(head, state, token, [token_id for token_id, _ in starts[:width]], len(greedy_branch))


def _alternatives(head, state, token: int, starts: list[int], drafts: int) -> list[list[int]]:
    """Branches that start with the head's next-best first drafts `starts`, each continued greedily by
    the head conditioned on it: the extra branches of a token tree."""
    if not starts or drafts < 2:
        return [[start] for start in starts]
    prefix = torch.tensor([[token, start] for start in starts], device=state.device)  # [k, 2]
    continued, _ = head.draft(state.expand(len(starts), -1), first=prefix, conditionals=False)
    return [continued[row, 1 : 1 + drafts].tolist() for row in range(len(starts))]


def _plan(costs, copy: list[int], head_drafts: int, lookup_reach: list[float], head_reach: list[float],
          alternative_rate: list[float], tree_ok: bool, draft_ms: float = 0.0,
          kind: Optional[str] = None, plain_ok: bool = False) -> tuple[str, int]:
    """This step's drafts: ("lookup" | "head" | "tree" (both) | "none", how many of the head's next-best
    first drafts to add as branches), whichever promises the most tokens per millisecond under the
    measured costs (tjdkit.decoding.costs): the copy when there are no costs. The head's drafting costs
    `draft_ms` (as timed in this generation) for its own row and one more per alternative, and a plain
    step, no drafts at all, is an option where `plain_ok` (the hybrid drafter; "head" and "lookup" draft
    as asked): a head whose drafts rarely hold does not pay for its drafting and a wider forward (the
    general head on held-out code and prose cost verify 6-19% of its speed before). `kind`: weigh
    that kind's widths only."""
    if not copy and not head_drafts:
        return "none", 0
    if costs is None:
        return ("lookup" if copy else "head"), 0
    options: dict[tuple[str, int], float] = {}
    if copy and kind in (None, "lookup"):
        options[("lookup", 0)] = expected_rate(costs, lookup_reach, len(copy))
    widths = range(0, min(MAX_ALTERNATIVES, len(alternative_rate)) + 1 if tree_ok else 1)
    for width in widths if head_drafts else ():
        # the alternatives' first drafts are other tokens than the greedy one: their chances add up
        first = min(head_reach[1] + sum(alternative_rate[:width]), 1.0)
        reach = [1.0] + [first * r / max(head_reach[1], 1e-9) for r in head_reach[1 : head_drafts + 1]]
        nodes = 1 + head_drafts * (1 + width)
        rows = 1 + head_drafts
        head_ms = expected_output_ms(costs, reach, rows, best_first_chunk(costs, reach, rows)) + (1 + width) * draft_ms
        if (width == 0 or tree_ok) and kind in (None, "head"):
            options[("head", width)] = expected_tokens(reach, head_drafts) / (costs.layers_ms(nodes) + head_ms)
        if copy and tree_ok and kind in (None, "tree"):  # the copy's tokens, plus the head's where the copy fails at its first draft
            tokens = expected_tokens(lookup_reach, len(copy)) + (1 - lookup_reach[1]) * (expected_tokens(reach, head_drafts) - 1)
            copy_ms = expected_output_ms(costs, lookup_reach, 1 + len(copy), best_first_chunk(costs, lookup_reach, 1 + len(copy)))
            options[("tree", width)] = tokens / (costs.layers_ms(nodes + len(copy)) + copy_ms + head_ms)
    if kind is None and plain_ok:
        options[("none", 0)] = 1.0 / (costs.layers_ms(1) + costs.output_ms(1))  # the model's own token only
    return max(options, key=options.get)  # a tie keeps the first: the copy, then fewer branches, then no drafts


def _accept(logits: Tensor, drafts: list[int], q: Optional[Tensor], ids, out: list[int], eos, sampling: Sampling,
            generator) -> tuple[list[int], int]:
    """The drafts the model accepts, then its own token -> (new tokens, accepted drafts).
    logits [1 + n, V]: row j predicts the token after the j-th fed token. q: the head's
    conditionals [n, V] (sampling), None for a copy (a point mass)."""
    new: list[int] = []
    for j, draft in enumerate(drafts):
        if sampling.argmax_only:  # greedy, no penalty: only the row's argmax is read (LazyLogits.token)
            ok = logits.token(j) == draft
        else:
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
    if new and new[-1] in eos:
        return new, accepted
    if sampling.argmax_only:
        new.append(logits.token(accepted))
    else:
        row = sampling.penalise(logits[accepted], penalty_context(ids, out + new))
        rejected_q = None
        if accepted < len(drafts):  # the draft at `accepted` was rejected: resample from the residual
            rejected_q = q[accepted] if q is not None else _point_mass(drafts[accepted], row)
        new.append(_model_token(row, rejected_q, sampling, generator))
    return new, accepted


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


