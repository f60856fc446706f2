"""The joint head as a transformers CandidateGenerator: what `attach_head` plugs into
transformers' own assisted-generation loop (tjdkit.decoding.assisted). Kept apart because it
imports transformers' generation code (about a second), which `import tjdkit.decoding` must not pay.

Each verify forward transformers runs feeds [x, d_1..d_n] (the last chosen token, then the
drafts); a forward hook on the backbone keeps that forward's final-norm hidden states
[1, n + 1, D] (what lm_head reads, and what the heads were trained on). After n accepted drafts,
row n predicted the token transformers appended last; the head drafts from it, conditioned on
that token (`head.draft(first=...)`, as tjdkit's verify does): H - 1 drafts a step, no extra forward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.generation.candidate_generator import CandidateGenerator

from tjdkit.decoding.stats import DecodeStats


class HeadCandidateGenerator(CandidateGenerator):
    """Drafts from the joint head for one `generate` call; counts forwards and accepted drafts in `stats`.

    Greedy: token drafts only (transformers keeps them while they equal the model's argmax).
    Sampling: the drafts are sampled from the head's conditionals q (tempered like the model) and
    returned with log q as candidate logits, so transformers runs speculative sampling
    (accept with min(1, p/q), else resample from max(0, p - q)): tokens follow the model's p.
    """

    def __init__(self, head, generation_config, stats: DecodeStats):
        self.head = head
        self.stats = stats
        self.do_sample = bool(generation_config.do_sample)
        self.temperature = float(generation_config.temperature or 1.0)
        self.max_length = int(generation_config.max_length)
        self.eos = getattr(generation_config, "_eos_token_tensor", None)
        self.hidden: Tensor | None = None  # [1, fed, D]: the last forward's final-norm hidden states
        self.state: Tensor | None = None  # [1, D]: the state that predicted the last token; None before the prefill
        self.offered = 0  # drafts offered to the forward now running

    def capture(self, _module, _args, output) -> None:
        """Forward hook on the backbone: keep its last_hidden_state (a reference, no copy)."""
        self.hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def get_candidates(self, input_ids: Tensor, **kwargs) -> tuple[Tensor, Tensor | None]:
        """input_ids [1, T] -> ([1, T + n] with the drafts appended, log q [1, n, V] when sampling, else None)."""
        self.offered = 0
        if self.state is None:  # the prefill comes first: it gives the state the head drafts from
            return input_ids, None
        room = self.max_length - input_ids.shape[1] - 1  # the model's own token follows the drafts
        count = min(self.head.horizon - 1, room)
        last = input_ids[0, -1:]  # [1]: the token the head's first position is fixed to
        if count < 1 or not bool(self.head.in_vocab(last).all()):
            return input_ids, None
        tokens, q = self.head.draft(
            self.state,
            greedy=not self.do_sample,
            temperature=self.temperature,
            first=last,
            conditionals=self.do_sample,  # greedy acceptance compares tokens only
        )
        drafts = tokens[:, 1 : 1 + count].to(device=input_ids.device, dtype=input_ids.dtype)  # [1, n]
        if self.eos is not None:  # nothing after an end-of-sequence draft can be kept
            hits = torch.isin(drafts[0], self.eos.to(drafts.device)).nonzero()
            if hits.numel():
                drafts = drafts[:, : int(hits[0]) + 1]
        self.offered = drafts.shape[1]
        logits = q[:, 1 : 1 + self.offered].log() if q is not None else None  # [1, n, V]; softmax(log q) = q
        return torch.cat([input_ids, drafts], dim=1), logits

    def update_candidate_strategy(self, input_ids: Tensor, scores: Tensor, num_matches: int) -> None:
        """After each forward: count it, and keep the hidden state that predicted the token just appended."""
        accepted = int(num_matches)
        if self.hidden is None:
            raise RuntimeError("the backbone's forward hook saw no forward")  # a model whose base_model was bypassed
        verify_step = self.state is not None  # else the prefill, which offers nothing
        row = self.hidden.shape[1] - (self.offered + 1) + accepted  # the prefill: its last row; a verify step: row n
        self.state = self.hidden[0, row : row + 1]  # [1, D]
        self.hidden = None
        self.stats.forwards += 1
        self.stats.new_tokens += accepted + 1
        if verify_step:
            self.stats.accepted.append(accepted)
            self.stats.offered.append(self.offered)
