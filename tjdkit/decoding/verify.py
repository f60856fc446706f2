"""(`head.draft(first=x)`): its first position is already decided by the verifier, so a
head of horizon H offers H-1 drafts and a forward yields up to H tokens. Greedy: the
drafts are accepted while they equal the model's argmax, then the model's own token
follows (output identical to `ar`). Sampling: the speculative-sampling rule (accept with
min(1, p/q), else resample from max(0, p - q) normalised; all accepted: a bonus token
from p), so tokens follow the model's own distribution. Rejected drafts are cropped off
the KV cache (sliding-window layers record their past for that).

Accounting, the same in every mode: `forwards` counts every model forward, the prefill
included, and nothing runs after the last token is chosen. So `ar` makes exactly one
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tjdkit.decoding.forward import hidden_and_logits, new_cache
from tjdkit.decoding.sampling import Sampling, penalty_context


def verify(model, head, ids, max_new_tokens, eos, sampling, generator, stats, emit) -> list[int]:
    """Self-speculative decoding: one forward per step verifies the last drafts and feeds the next."""
    device = ids.device
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
        q = None  # [n, V]: the head's conditionals the drafts were drawn from
        if room > 1 and head.horizon > 1 and bool(head.in_vocab(first).all()):
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
                ok = u * float(q[j, draft]) < float(sampling.probs(row)[draft])  # u < min(1, p/q)
            if not ok:
                break
            new.append(draft)
            if draft in eos:
                break
        accepted = len(new)
        if not (new and new[-1] in eos):
            row = sampling.penalise(logits[accepted], penalty_context(ids, out + new))
            rejected_q = q[accepted] if q is not None and accepted < len(drafts) else None
            new.append(_model_token(row, rejected_q, sampling, generator))
        stats.accepted.append(accepted)
        stats.offered.append(len(drafts))
        cache.crop(-(len(drafts) - accepted))  # drop rejected drafts; crop(0) trims sliding windows
        state = hidden[accepted : accepted + 1]  # [1, D]: predicted new[-1]
        out += new
        emit(new)
        token = new[-1]
    return out


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


