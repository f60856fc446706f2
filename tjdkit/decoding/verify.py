"""Lossless speculative decoding: each forward feeds [the last chosen token x, then the drafts];
its logits verify the drafts and its hidden states feed the next draft.

Drafts come from the joint head or from prompt lookup (tjdkit.decoding.drafters). The head
drafts from the hidden state that predicted x, *conditioned on x* (`head.draft(first=x)`):
its first position is already decided by the verifier, so a head of horizon H offers H-1
drafts. Lookup offers the tokens that followed the context's last n-gram where it occurred
before. Greedy: the drafts are accepted while they equal the model's argmax, then the model's
own token follows (output identical to `ar`). Sampling: the speculative-sampling rule (accept
with min(1, p/q), else resample from max(0, p - q) normalised; all accepted: a bonus token
from p), with q the head's conditionals or, for a lookup draft, a point mass on it; so tokens
follow the model's own distribution. Rejected drafts are cropped off the KV cache
(sliding-window layers record their past for that).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tjdkit.decoding.drafters import LOOKUP_TOKENS, lookup_drafts
from tjdkit.decoding.forward import hidden_and_logits, new_cache
from tjdkit.decoding.sampling import Sampling, penalty_context


def verify(model, head, ids, max_new_tokens, eos, sampling, generator, stats, emit, drafter="head") -> list[int]:
    """Speculative decoding: one forward per step verifies the last drafts and feeds the next.
    drafter: "head", "lookup", or "hybrid" (lookup where the context repeats, else the head)."""
    device = ids.device
    context = ids[0].tolist()  # the prompt, then every chosen token: what lookup searches
    cache = new_cache(model)
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
        drafts: list[int] = []
        q = None  # [n, V]: the head's conditionals the drafts were drawn from; None for lookup (a point mass)
        if drafter != "head" and room > 1:
            drafts = lookup_drafts(context + out, limit=min(LOOKUP_TOKENS, room - 1))
            stats.lookup_steps += bool(drafts)
        use_head = drafter != "lookup" and not drafts and head is not None and head.horizon > 1
        if use_head and room > 1 and bool(head.in_vocab(first).all()):
            drafted, q_all = head.draft(
                state,
                greedy=sampling.greedy,
                temperature=sampling.temperature or 1.0,
                generator=generator,
                first=first,
                conditionals=not sampling.greedy,  # greedy acceptance compares tokens only
            )
            n = min(head.horizon - 1, room - 1)
            drafts = drafted[0, 1 : 1 + n].tolist()
            q = q_all[0, 1 : 1 + n].to(device) if q_all is not None else None
        feed = torch.tensor([[token] + drafts], dtype=ids.dtype, device=device)  # [1, 1 + n]
        hidden, logits = hidden_and_logits(model, feed, cache)  # row j predicts the token after feed[j]
        stats.forwards += 1

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
        stats.accepted.append(accepted)
        stats.offered.append(len(drafts))
        cache.crop(-(len(drafts) - accepted))  # drop rejected drafts; crop(0) trims sliding windows
        state = hidden[accepted : accepted + 1]  # [1, D]: predicted new[-1]
        out += new
        emit(new)
        token = new[-1]
    return out


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


