"""The seed's sampling API: a batch of prefixes, KV-cached, each row stopping at its own EOS.

Molecule generation samples thousands of rows from the same task token; one batched
forward per step does them all. `use_cache=False` re-runs the whole sequence each step:
the reference the cached path is tested against.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

import torch
from torch import Tensor

from tjdkit.decoding import Sampling
from tjdkit.models.hyformer.layers import KVCache


@torch.no_grad()
def sample(
    model,
    prefix: Union[Tensor, list],  # [B, T] (or [T]) token ids, the task token first
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    eos: Optional[Union[int, Iterable[int]]] = None,
    seed: Optional[int] = None,
    use_cache: bool = True,
) -> Tensor:
    """-> [B, T + n] with n <= max_new_tokens (fewer when every row ended, or at max_seq_len).
    After a row's EOS its remaining places hold the pad id."""
    device = next(model.parameters()).device
    ids = torch.as_tensor(prefix, dtype=torch.long, device=device)
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[1] < 1:
        raise ValueError(f"prefix must be token ids of shape [B, T] with T >= 1, got {list(ids.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    config = model.config
    steps = min(max_new_tokens, config.max_seq_len - ids.shape[1])
    stop = _eos_ids(eos if eos is not None else config.eos_token_id)
    pad = config.pad_token_id if config.pad_token_id is not None else (stop[0] if stop else 0)
    stop_ids = torch.tensor(stop, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    sampling = Sampling(temperature, top_k or None, top_p)

    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    cache = [KVCache() for _ in model.blocks] if use_cache else None
    out, feed = ids, ids
    for _ in range(max(steps, 0)):
        source = feed if use_cache else out
        logits = model(source, task="lm", kv_caches=cache, use_cache=use_cache).logits[:, -1].float()  # [B, V]
        if sampling.greedy:
            token = logits.argmax(dim=-1)
        else:
            token = torch.multinomial(sampling.probs(logits), 1, generator=generator).squeeze(-1)
        token = token.masked_fill(done, pad)  # [B]
        out = torch.cat([out, token[:, None]], dim=1)
        done |= torch.isin(token, stop_ids)
        if bool(done.all()):
            break
        feed = token[:, None]
    return out


def _eos_ids(eos) -> list[int]:
    if eos is None:
        return []
    if isinstance(eos, int):
        return [eos]
    return [int(token) for token in eos]
