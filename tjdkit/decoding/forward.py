"""One KV-cached forward of the model, and the output layer: the primitives every decoding
path (ar, draft, verify, TNOT, the benchmarks) shares, so a speed-up here is shared and
comparisons between them stay fair."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tjdkit.decoding.kv_buffers import BufferedLayer, BufferedSlidingWindowLayer, buffered_layers
from tjdkit.kernels import output_layer
from tjdkit.kernels.argmax import greedy_tokens as screened_argmax
from tjdkit.kernels.argmax import uses_screen


def new_cache(model):
    """An empty DynamicCache shaped by the config, so sliding-window layers (Gemma 3) keep only their
    window, with layers that append in place (tjdkit.decoding.kv_buffers)."""
    if hasattr(model, "new_cache"):  # a model that brings its own cache (a custom TJD backbone: tjdkit.tjd)
        return model.new_cache()
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    buffered_layers(cache)
    return cache


def dynamic_layers_only(cache) -> bool:
    """Whether every layer of the cache is one of transformers' own dynamic layers (full or sliding), whose
    masks transformers builds and whose contents tjdkit may feed in pieces or rearrange."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    own = (DynamicLayer, DynamicSlidingWindowLayer, BufferedLayer, BufferedSlidingWindowLayer)
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in own for layer in layers)


def prefill_chunk(model, cache) -> Optional[int]:
    """How many prompt tokens to feed per forward when only the last position's output is needed: the
    sliding window, for a model whose layers attend to a window and whose cache is transformers' own
    (Gemma 3). A whole long prompt makes every sliding layer compute the full [T, T] attention and mask
    most of it away; in chunks of the window, each chunk attends to at most twice the window (a
    3174-token prompt: ~35% less prefill time on a 2-core CPU). None: feed the prompt whole."""
    window = getattr(model.config.get_text_config(), "sliding_window", None)
    if not window or not dynamic_layers_only(cache) or not any(getattr(layer, "is_sliding", False) for layer in cache.layers):
        return None
    return int(window)


def next_logits(model, ids: Tensor, cache) -> Tensor:
    """ids [1, n] appended to the cache -> next-token logits [V] (float32) at the last position."""
    return output_logits(model, next_hidden(model, ids, cache))[0]


def next_hidden(model, ids: Tensor, cache) -> Tensor:
    """ids [1, n] appended to the cache -> final normed hidden state [1, D] at the last position; a long
    prompt is fed in `prefill_chunk` pieces (its other positions' outputs are never read).

    Runs the backbone only (no lm_head): the head needs what lm_head would see, which is
    also what `tjdkit.heads.windows.last_hidden` gives the head during training.
    """
    chunk = prefill_chunk(model, cache) if ids.shape[1] > 1 else None
    start = 0
    while chunk and ids.shape[1] - start > chunk:
        model.base_model(input_ids=ids[:, start : start + chunk], cache=cache, use_cache=True)
        start += chunk
    return model.base_model(input_ids=ids[:, start:], cache=cache, use_cache=True).last_hidden_state[:, -1]


def output_logits(model, hidden: Tensor) -> Tensor:
    """hidden [n, D] (final normed states) -> the model's logits [n, V], float32.

    Soft-capping (Gemma 2 style configs) is applied as the model's own forward does.
    """
    return soft_cap(model, raw_logits(model, hidden))


def raw_logits(model, hidden: Tensor) -> Tensor:
    """hidden [n, D] -> the output layer's logits [n, V] before any soft-capping, float32.

    The kernel (nn.Linear or one GEMM) is the one measured fastest on this CPU for this layer
    (tjdkit.kernels); ar, draft, verify and TNOT all come through here, so the modes
    a benchmark compares share it.
    """
    return output_layer(model.get_output_embeddings(), hidden).float()


def greedy_tokens(model, hidden: Tensor) -> list[int]:
    """hidden [n, D] (final normed states) -> the model's greedy token for each row, the argmax of
    its logits: through the exact int8 screen where it measured faster on this machine
    (tjdkit.kernels.argmax), so ar and verify share it. Soft-capped logits are computed whole
    (tanh can round two of them to one value, and argmax then takes the first)."""
    if soft_cap_value(model):
        return output_logits(model, hidden).argmax(dim=-1).tolist()
    return screened_argmax(model.get_output_embeddings(), hidden)


def screens_argmax(model) -> bool:
    """Whether `greedy_tokens` takes the int8 screen for this model on this machine."""
    device = next(model.parameters()).device
    return not soft_cap_value(model) and uses_screen(model.get_output_embeddings(), device)


def soft_cap(model, logits: Tensor) -> Tensor:
    """The model's own logit soft-capping (Gemma 2 style configs) applied to raw logits."""
    return apply_soft_cap(logits, soft_cap_value(model))


def soft_cap_value(model) -> Optional[float]:
    """The config's final_logit_softcapping, or None when the model does not cap its logits."""
    return getattr(model.config.get_text_config(), "final_logit_softcapping", None)


def apply_soft_cap(logits: Tensor, cap: Optional[float]) -> Tensor:
    """cap * tanh(logits / cap), or the logits as they are when cap is None or 0."""
    return torch.tanh(logits / cap) * cap if cap else logits


def hidden_states(model, ids: Tensor, cache) -> Tensor:
    """ids [1, n] appended to the cache -> final normed hidden states [n, D] (no output layer)."""
    return model.base_model(input_ids=ids, cache=cache, use_cache=True).last_hidden_state[0]


class LazyLogits:
    """The logits of hidden [n, D], computed in chunks as rows are read: a read of a row not yet
    computed computes it and the rows after it, `first` rows, then twice as many each time.
    Verification reads rows only until the first rejected draft, and on a large vocabulary the
    output layer costs more than the layers (tjdkit.decoding.costs), so rows nobody reads are never
    computed. A token tree's accepted path may jump to another branch; the chunk then starts there
    (depth-first order keeps each branch contiguous). Each row is the one `output_logits` gives for it."""

    def __init__(self, model, hidden: Tensor, first: int = 1):
        self.model, self.hidden = model, hidden
        self.rows: dict[int, Tensor] = {}  # row -> logits [V]
        self.tokens: dict[int, int] = {}  # row -> its argmax, where only that was asked (`token`)
        self.computed = 0  # rows computed so far
        self.next_size = max(first, 1)

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, row: int) -> Tensor:
        """Row `row` [V], float32 (rows from the end count back, as in a tensor)."""
        row = self._index(row)
        if row not in self.rows:
            end = self._chunk_end(row, self.rows)
            block = output_logits(self.model, self.hidden[row:end])  # [end - row, V]
            self.rows.update(zip(range(row, end), block))
        return self.rows[row]

    def token(self, row: int) -> int:
        """Row `row`'s greedy token, its argmax (`greedy_tokens`: the screen where it pays), for
        greedy decoding without a penalty, which reads nothing else. Chunked as rows are."""
        row = self._index(row)
        if row in self.rows:
            return int(self.rows[row].argmax())
        if row not in self.tokens:
            end = self._chunk_end(row, self.tokens)
            self.tokens.update(zip(range(row, end), greedy_tokens(self.model, self.hidden[row:end])))
        return self.tokens[row]

    def _index(self, row: int) -> int:
        row = row + len(self) if row < 0 else row
        if not 0 <= row < len(self):
            raise IndexError(row)
        return row

    def _chunk_end(self, row: int, done: dict) -> int:
        """The end of the chunk starting at `row` (never a row twice); counts it as computed."""
        end = min([row + self.next_size, len(self)] + [known for known in done if known > row])
        self.computed += end - row
        self.next_size *= 2
        return end
