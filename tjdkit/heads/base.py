"""The common base of every joint head: projections, the shared decoder, the draft vocabulary.

A joint head models p(y_1..y_H | h) for the H tokens after a hidden state h of the base
model. Every head is built from "components" (one per (rank, position) pair for CP/MPS,
one per position for multihead): each component projects h into its own embedding
[E], and ONE decoder Linear(E, K) shared by all components turns embeddings into logits
over the K tokens the head covers (the full vocabulary, or a draft subset). Sharing the
decoder keeps the parameter count close to one lm_head, and initialising it from the
model's own lm_head, with near-identity projections, makes a fresh head start close to
the base model's next-token distribution.

Subclasses implement two things on "local" token indices (0..K-1 into `vocab_ids`):
`_log_prob_local` (exact normalised log-probability) and `_draft_local` (sequential
drafting with the true conditionals). The base class maps to and from global token ids.
"""

from __future__ import annotations

import abc
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from tjdkit.errors import TjdkitError
from tjdkit.heads.hub import HubMixin
from tjdkit.heads.positivity import POSITIVITY, log_factors
from tjdkit.kernels import output_layer

DraftVocab = Union[int, Tensor, Sequence[int], None]


def available_memory() -> Optional[int]:
    """Bytes of memory available now (Linux: MemAvailable), else the physical total, else None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _one_row_expanded(hidden: Tensor) -> bool:
    """hidden [B, D] is one row expanded B times (stride 0): what depends on the state alone is computed once."""
    return hidden.dim() == 2 and hidden.shape[0] > 1 and hidden.stride(0) == 0


class JointHead(HubMixin, nn.Module, metaclass=abc.ABCMeta):
    """Base class: p(y_1..y_H | hidden) with exact `log_prob` and conditional-exact `draft`.

    Args:
        hidden_size: D, the base model's hidden size.
        vocab_size: V, the base model's vocabulary size.
        rank: R, the number of mixture components / bond dimension (ignored by stp, multihead).
        horizon: H, how many tokens the head predicts.
        embedding_dim: E, each component's embedding size (default D).
        positivity: how factors are made non-negative; "none" = normalised (log_softmax).
        draft_vocab: K (ids 0..K-1 until `set_vocab_ids`) or the K token ids themselves;
            other tokens get probability 0. None = the full vocabulary.
        lm_head_weight: [V, D] weights to initialise the shared decoder (needs E == D).
        freeze_decoder: keep the shared decoder fixed during training.
        init_noise: relative size of the noise added to the identity projections; it
            breaks the symmetry between components (0 = exact copies of the base model).
    """

    name: str = ""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        rank: int = 1,
        horizon: int = 1,
        *,
        embedding_dim: Optional[int] = None,
        positivity: str = "none",
        draft_vocab: DraftVocab = None,
        lm_head_weight: Optional[Tensor] = None,
        freeze_decoder: bool = False,
        init_noise: float = 0.02,
    ):
        super().__init__()
        sizes = {"hidden_size": hidden_size, "vocab_size": vocab_size, "rank": rank, "horizon": horizon}
        for what, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TjdkitError(f"{self.name} head: {what} must be an integer >= 1, got {value!r}")
        if embedding_dim is None:
            embedding_dim = hidden_size
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise TjdkitError(f"{self.name} head: embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        if positivity not in POSITIVITY:
            raise TjdkitError(
                f"{self.name} head: unknown positivity {positivity!r} (choose from {', '.join(POSITIVITY)})"
            )
        if not isinstance(init_noise, (int, float)) or init_noise < 0:
            raise TjdkitError(f"{self.name} head: init_noise must be a number >= 0, got {init_noise!r}")
        self.hidden_size = hidden_size
        self.vocab_size = vocab_size
        self.rank = rank
        self.horizon = horizon
        self.embedding_dim = embedding_dim
        self.positivity = positivity
        self.freeze_decoder = bool(freeze_decoder)
        self.init_noise = float(init_noise)
        self._check_structure()

        # Draft vocabulary: the decoder covers K token ids, `vocab_ids` [K].
        ids = None if draft_vocab is None else self._check_vocab_ids(draft_vocab)
        self.draft_vocab = None if ids is None else int(ids.numel())
        self.register_buffer("vocab_ids", ids)
        k = vocab_size if ids is None else self.draft_vocab

        # One projection per component: [C, E, D], near identity when E == D.
        c = self.num_components()
        self._check_fits_in_memory(c * embedding_dim * hidden_size + embedding_dim * k + self._extra_parameters())
        if embedding_dim == hidden_size:
            proj = torch.eye(hidden_size).repeat(c, 1, 1)
            proj += torch.randn(c, hidden_size, hidden_size) * (self.init_noise / hidden_size**0.5)
        else:
            proj = torch.randn(c, embedding_dim, hidden_size) / hidden_size**0.5
        self.proj = nn.Parameter(proj)
        self.decoder = nn.Linear(embedding_dim, k, bias=False)  # shared by all components
        if lm_head_weight is not None:
            self._init_decoder(lm_head_weight)
        if self.freeze_decoder:
            self.decoder.weight.requires_grad_(False)

    # ---- what subclasses provide -------------------------------------------------------

    def _check_structure(self) -> None:
        """Raise TjdkitError when (rank, horizon) do not suit the head."""

    def _extra_parameters(self) -> int:
        """Parameters beyond the projections and the decoder (mixture or transition layers), counted before
        they are allocated."""
        return 0

    def _check_fits_in_memory(self, parameters: int) -> None:
        """A head larger than the machine's memory is refused before torch tries to allocate it."""
        available = available_memory()
        needed = 2 * 4 * parameters  # float32, and the projections' initial values are built beside them
        if available is not None and needed > available:
            raise TjdkitError(
                f"{self.name} head: rank {self.rank}, horizon {self.horizon} on hidden size {self.hidden_size} needs "
                f"{parameters:,} parameters ({needed / 2**30:,.1f} GiB to build), more than the {available / 2**30:.1f} GiB "
                "of memory available: choose a smaller --rank or --horizon"
            )

    @abc.abstractmethod
    def num_components(self) -> int:
        """How many (rank, position) components have their own projection."""

    @abc.abstractmethod
    def _log_prob_local(self, hidden: Tensor, local: Tensor) -> Tensor:
        """hidden [B, D], local [B, H] in 0..K-1 -> exact log p [B] (compute dtype)."""

    @abc.abstractmethod
    def _draft_local(self, hidden: Tensor, pick) -> tuple[Tensor, Tensor]:
        """hidden [B, D] -> (local tokens [B, H], q [B, H, K]); `pick(log_u [B, K])` chooses a token."""

    # ---- configuration -----------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-able dict: `build_head(**head.config())` rebuilds the
        structure, and `load_state_dict` then restores the weights and the draft token ids."""
        return {
            "name": self.name,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "rank": self.rank,
            "horizon": self.horizon,
            "embedding_dim": self.embedding_dim,
            "positivity": self.positivity,
            "draft_vocab": self.draft_vocab,
            "freeze_decoder": self.freeze_decoder,
            "init_noise": self.init_noise,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")

    # ---- draft vocabulary --------------------------------------------------------------

    def _check_vocab_ids(self, draft_vocab: DraftVocab) -> Tensor:
        v = self.vocab_size
        if isinstance(draft_vocab, bool):
            raise TjdkitError(f"{self.name} head: draft_vocab must be an int or token ids, got {draft_vocab!r}")
        if isinstance(draft_vocab, int):
            if not 1 <= draft_vocab <= v:
                raise TjdkitError(f"{self.name} head: draft_vocab must be in 1..vocab_size={v}, got {draft_vocab}")
            return torch.arange(draft_vocab)
        ids = torch.as_tensor(draft_vocab).detach().cpu()
        if ids.dim() != 1 or ids.numel() == 0 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TjdkitError(f"{self.name} head: draft_vocab ids must be a non-empty 1-D integer tensor")
        ids = ids.long()
        if ids.numel() > v:
            raise TjdkitError(f"{self.name} head: draft_vocab has {ids.numel()} ids, more than vocab_size={v}")
        if int(ids.min()) < 0 or int(ids.max()) >= v:
            raise TjdkitError(f"{self.name} head: draft_vocab ids must lie in 0..{v - 1}")
        if ids.unique().numel() != ids.numel():
            raise TjdkitError(f"{self.name} head: draft_vocab ids must be distinct")
        return ids

    @torch.no_grad()
    def set_vocab_ids(self, ids: Union[Tensor, Sequence[int]], lm_head_weight: Optional[Tensor] = None) -> None:
        """Choose which K token ids the decoder rows stand for (e.g. the K most frequent).

        Pass `lm_head_weight` [V, D] to re-initialise the decoder rows from those tokens.
        """
        if self.vocab_ids is None:
            raise TjdkitError(f"{self.name} head: set_vocab_ids needs a head built with draft_vocab")
        ids = self._check_vocab_ids(ids)
        if ids.numel() != self.draft_vocab:
            raise TjdkitError(f"{self.name} head: expected {self.draft_vocab} vocab ids, got {ids.numel()}")
        self.vocab_ids.copy_(ids)
        if lm_head_weight is not None:
            self._init_decoder(lm_head_weight)

    @torch.no_grad()
    def _init_decoder(self, lm_head_weight: Tensor) -> None:
        w = torch.as_tensor(lm_head_weight)
        if tuple(w.shape) != (self.vocab_size, self.hidden_size):
            raise TjdkitError(
                f"{self.name} head: lm_head_weight must be [vocab_size, hidden_size] = "
                f"[{self.vocab_size}, {self.hidden_size}], got {list(w.shape)}"
            )
        if self.embedding_dim != self.hidden_size:
            raise TjdkitError(f"{self.name} head: lm_head_weight needs embedding_dim == hidden_size")
        if self.vocab_ids is not None:
            w = w[self.vocab_ids.to(w.device)]
        self.decoder.weight.copy_(w.to(self.decoder.weight.device, self.decoder.weight.dtype))

    def in_vocab(self, targets: Tensor) -> Tensor:
        """Bool mask, same shape as targets: which tokens the head can give probability > 0."""
        ok = (targets >= 0) & (targets < self.vocab_size)
        if self.vocab_ids is None:
            return ok
        return ok & (self._local_index(targets) >= 0)

    def _local_index(self, targets: Tensor) -> Tensor:
        """Global ids -> local indices into vocab_ids (-1 where outside the draft vocabulary)."""
        if self.vocab_ids is None:
            return torch.where((targets >= 0) & (targets < self.vocab_size), targets, -1)
        # Rebuilt on every call (O(V)) so it can never go stale after set_vocab_ids / load_state_dict.
        index = torch.full((self.vocab_size,), -1, dtype=torch.long, device=targets.device)
        index[self.vocab_ids.to(targets.device)] = torch.arange(self.draft_vocab, device=targets.device)
        outside = (targets < 0) | (targets >= self.vocab_size)
        return index[targets.clamp(0, self.vocab_size - 1)].masked_fill(outside, -1)

    # ---- shared computation ------------------------------------------------------------

    def _compute_dtype(self) -> torch.dtype:
        """Reductions run in float32 (float64 when the head is float64), also for bfloat16 heads."""
        return torch.float64 if self.proj.dtype == torch.float64 else torch.float32

    def _input(self, hidden: Tensor) -> Tensor:
        return hidden.to(self.proj.dtype)

    def _factors(self, hidden: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """hidden [B, D] -> log f [B, C, K] and log Z [B, C] (None when normalised), compute dtype."""
        if _one_row_expanded(hidden):  # one state under several prefixes (a token tree): the decoder runs once
            log_f, log_z = self._factors(hidden[:1])
            expand = hidden.shape[0]
            return log_f.expand(expand, *log_f.shape[1:]), None if log_z is None else log_z.expand(expand, -1)
        x = self._input(hidden)
        emb = torch.einsum("bd,ced->bce", x, self.proj)  # [B, C, E]
        if torch.is_grad_enabled():
            logits = self.decoder(emb)  # [B, C, K]
        else:  # drafting: the kernel measured fastest for this decoder on this CPU (tjdkit.kernels)
            logits = output_layer(self.decoder, emb.reshape(-1, emb.shape[-1])).view(*emb.shape[:2], -1)
        return log_factors(logits.to(self._compute_dtype()), self.positivity)

    def _linear_log_softmax(self, linear: nn.Linear, hidden: Tensor, shape: tuple[int, ...]) -> Tensor:
        """A small Linear on the hidden state, reshaped to [B, *shape], log_softmax on the last dim."""
        if _one_row_expanded(hidden):
            return self._linear_log_softmax(linear, hidden[:1], shape).expand(hidden.shape[0], *shape)
        out = linear(self._input(hidden)).to(self._compute_dtype())
        return torch.log_softmax(out.view(hidden.shape[0], *shape), dim=-1)

    def _check_hidden(self, hidden: Tensor) -> None:
        if hidden.shape[-1] != self.hidden_size:
            raise TjdkitError(
                f"{self.name} head: hidden must end in hidden_size={self.hidden_size}, got {list(hidden.shape)}"
            )

    # ---- public API --------------------------------------------------------------------

    def log_prob(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """Exact normalised log p(y_1..y_H | hidden).

        hidden [..., D], targets [..., H] (long) -> [...] float32 (float64 for a float64 head).
        Targets outside the draft vocabulary (or outside 0..V-1, e.g. an ignore index) get
        -inf: they have probability 0 under the head, so training code masks them out
        (select with `in_vocab(targets).all(-1)` before reducing: -inf * 0 is NaN).
        """
        self._check_hidden(hidden)
        if targets.shape != (*hidden.shape[:-1], self.horizon):
            raise TjdkitError(
                f"{self.name} head: targets must be [..., horizon={self.horizon}] matching hidden "
                f"{list(hidden.shape)}, got {list(targets.shape)}"
            )
        lead = hidden.shape[:-1]
        hidden = hidden.reshape(-1, self.hidden_size)  # [B, D]
        local = self._local_index(targets.reshape(-1, self.horizon).long())  # [B, H]
        inside = (local >= 0).all(dim=-1)  # [B]
        out = self._log_prob_local(hidden, local.clamp(min=0))  # [B]
        out = out.masked_fill(~inside, float("-inf"))
        return out.view(lead)

    @torch.no_grad()
    def draft(
        self,
        hidden: Tensor,
        greedy: bool = True,
        temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
        first: Optional[Tensor] = None,
        conditionals: bool = True,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """Draft H tokens one after the other from the head's joint distribution.

        hidden [B, D] -> (tokens [B, H] long, q [B, H, V] float32, float64 for a float64 head). q[:, h] is the
        distribution the token at position h was chosen from: the head's true conditional
        p(y_h | y_<h drafted, hidden) when greedy (tokens = its argmax), or that conditional
        tempered by `temperature` when sampling (with `generator`). Rows are normalised over
        the full vocabulary, with zeros outside the draft vocabulary: what lossless
        speculative verification needs. Runs without gradients.

        `first` [B] (token ids) fixes y_1 instead of drafting it: positions 2..H are then
        drafted from p(y_2..y_H | y_1 = first, hidden). Verified decoding uses this: the
        verifier already knows the next token, and the joint head conditions on it.
        `first` [B, m] fixes y_1..y_m (a token tree's branch that starts with the head's
        next-best y_2 is continued this way).
        `conditionals=False` returns q = None (greedy verification does not need it).
        """
        local, q_local = self._draft_checked(hidden, greedy, temperature, generator, first)  # [B, H], [B, H, K]
        if not conditionals:
            return (local if self.vocab_ids is None else self.vocab_ids.to(local.device)[local]), None
        if self.vocab_ids is None:
            return local, q_local
        ids = self.vocab_ids.to(local.device)
        q = q_local.new_zeros(*q_local.shape[:2], self.vocab_size)
        q[..., ids] = q_local
        return ids[local], q

    @torch.no_grad()
    def draft_next_best(self, hidden: Tensor, first: Optional[Tensor], k: int) -> tuple[Tensor, Tensor, Tensor]:
        """A greedy draft (as `draft`) and, at each position, the k most likely tokens of the conditional it
        was drawn from: the candidates for a token tree's other branches. Taken over the head's own draft
        vocabulary, so nothing is spread over the model's full one.
        hidden [B, D] -> (tokens [B, H], next-best ids [B, H, k'], their probabilities [B, H, k']), k' = min(k, K)."""
        local, q_local = self._draft_checked(hidden, True, 1.0, None, first)  # [B, H], [B, H, K]
        best = q_local.topk(min(k, q_local.shape[-1]), dim=-1)  # over the draft vocabulary K
        if self.vocab_ids is None:
            return local, best.indices, best.values
        ids = self.vocab_ids.to(local.device)
        return ids[local], ids[best.indices], best.values

    def _draft_checked(self, hidden: Tensor, greedy: bool, temperature: float, generator: Optional[torch.Generator],
                       first: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """`draft`'s checks, then the draft in local ids: (tokens [B, H], conditionals [B, H, K])."""
        self._check_hidden(hidden)
        if hidden.dim() != 2:
            raise TjdkitError(f"{self.name} head: draft takes hidden [B, D], got {list(hidden.shape)}")
        if not greedy and not temperature > 0:
            raise TjdkitError(f"{self.name} head: sampling needs temperature > 0, got {temperature!r}")
        forced = None
        if first is not None:
            first = torch.as_tensor(first, device=hidden.device).long()
            first = first.reshape(-1, 1) if first.dim() < 2 else first
            if first.dim() != 2 or first.shape[0] != hidden.shape[0] or not 1 <= first.shape[1] <= self.horizon:
                raise TjdkitError(f"{self.name} head: first must be [B] or [B, m] with B = {hidden.shape[0]} and "
                                  f"m <= horizon = {self.horizon}, got {list(first.shape)}")
            forced = self._local_index(first)  # [B, m]
            if bool((forced < 0).any()):
                raise TjdkitError(f"{self.name} head: first token outside the head's vocabulary (check in_vocab)")
        position = 0

        def pick(log_u: Tensor) -> tuple[Tensor, Tensor]:
            # log_u [B, K]: unnormalised log conditional -> (token [B], q [B, K])
            nonlocal position
            position += 1
            if forced is not None and position <= forced.shape[1]:
                return forced[:, position - 1], torch.softmax(log_u, dim=-1)
            if greedy:
                q = torch.softmax(log_u, dim=-1)
                return q.argmax(dim=-1), q
            q = torch.softmax(log_u / temperature, dim=-1)
            return torch.multinomial(q, 1, generator=generator).squeeze(-1), q

        return self._draft_local(hidden, pick)
