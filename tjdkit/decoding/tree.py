"""Token-tree verification: several draft branches after the last chosen token x, verified in ONE
forward of the shared tree (Medusa / EAGLE / SpecInfer trees), over the shared KV cache.

The branches (the copy, the head's greedy drafts, the head's next-best first drafts each
continued by the head) become a trie rooted at x. Its nodes are fed in depth-first order, each
at position (past + depth), under an attention mask where a node sees the past and its own
ancestors only; for sliding-window layers (Gemma 3), the past it sees ends `sliding_window`
positions before the node's own position, as in the model's own mask. Greedy acceptance then
walks the trie from x: while the model's argmax at a node is one of its children, that child is
accepted. Finally the cache keeps x and the accepted nodes, in order, and drops every other branch.

transformers builds masks for left-to-right sequences only; a 4D mask (a dict of one per layer
type, for models whose layers mix full and sliding attention) is passed as-is to the layers, which
is the documented way in for custom masks. Depth-first order keeps each node's first-child chain
contiguous, so the output layer still runs lazily in chunks along the path acceptance takes.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tjdkit.decoding.forward import LazyLogits, dynamic_layers_only
from tjdkit.decoding.kv_buffers import writable
from tjdkit.decoding.sampling import Sampling, penalty_context

MASKED_LAYERS = ("full_attention", "sliding_attention")  # layer types whose masks tjdkit can build


class TokenTree:
    """A trie of draft branches under a root token: nodes in depth-first order (parent before child,
    a node's first child right after it), so node 0 is the root."""

    def __init__(self, root: int, branches: list[list[int]]):
        trie: list[dict[int, int]] = [{}]  # insertion-ordered children: token -> trie node
        token_of = [root]
        for branch in branches:
            node = 0
            for token in branch:
                if token not in trie[node]:
                    trie[node][token] = len(trie)
                    trie.append({})
                    token_of.append(token)
                node = trie[node][token]
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        pending = [(0, -1)]  # (trie node, its parent's number): depth-first, first child first
        while pending:
            node, parent = pending.pop()
            number = len(self.tokens)
            self.tokens.append(token_of[node])
            self.parents.append(parent)
            self.depths.append(self.depths[parent] + 1 if parent >= 0 else 0)
            pending.extend((child, number) for child in reversed(list(trie[node].values())))
        self.children: list[dict[int, int]] = [{} for _ in self.tokens]  # token -> node number
        for number in range(1, len(self.tokens)):
            self.children[self.parents[number]][self.tokens[number]] = number

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestors(self) -> Tensor:
        """[n, n] bool: [i, j] when node j is node i or one of its ancestors."""
        n = len(self)
        seen = torch.zeros(n, n, dtype=torch.bool)
        for node in range(n):
            seen[node, node] = True
            if node:
                seen[node] |= seen[self.parents[node]]
        return seen


def tree_supported(model, cache) -> bool:
    """Whether this model and cache can verify a tree: a transformers architecture (its masks come from
    transformers' masking utilities, which take a prepared 4D mask as-is; Hyformer's own forward takes
    key masks only), transformers' own dynamic cache layers (full or sliding), an attention that takes
    a 4D mask (eager, sdpa), and layer types tjdkit builds masks for."""
    if not type(getattr(model, "base_model", model)).__module__.startswith("transformers.models."):
        return False
    config = model.config.get_text_config()
    if not dynamic_layers_only(cache) or getattr(config, "_attn_implementation", None) not in ("eager", "sdpa"):
        return False
    return set(getattr(config, "layer_types", None) or ["full_attention"]) <= set(MASKED_LAYERS)


def tree_masks(model, cache, tree: TokenTree, device) -> tuple[object, Tensor]:
    """The attention mask (a [1, 1, n, kv] tensor, or a dict by layer type) and position ids [1, n]
    for feeding `tree` after what the cache holds."""
    config = model.config.get_text_config()
    past = cache.get_seq_length()
    depth = torch.tensor(tree.depths, device=device)
    positions = past + depth  # [n]: each node's position in the sequence
    ancestors = tree.ancestors().to(device)
    layer_types = getattr(config, "layer_types", None)
    eager = config._attn_implementation == "eager"

    def mask_for(layer_index: int, sliding: bool) -> Tensor:
        kv_length, kv_offset = cache.get_mask_sizes(len(tree), layer_index)
        seen = kv_length - len(tree)  # past entries this layer's attention receives
        past_positions = kv_offset + torch.arange(seen, device=device)  # [seen]
        visible = torch.ones(len(tree), seen, dtype=torch.bool, device=device)
        if sliding:
            visible &= (positions[:, None] - past_positions[None, :]) < config.sliding_window
        mask = torch.cat([visible, ancestors], dim=1)[None, None]  # [1, 1, n, kv]
        if eager:  # eager attention adds its mask to the scores
            return torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float16).min)
        return mask

    if not layer_types:
        masks: object = mask_for(0, False)
    else:
        masks = {kind: mask_for(layer_types.index(kind), kind == "sliding_attention") for kind in set(layer_types)}
    return masks, positions[None]


def compact_cache(cache, fed: int, keep: list[int]) -> None:
    """After a forward of `fed` tree nodes: keep only the nodes `keep` (indices into the fed nodes, in
    order) in every layer; sliding layers then drop what falls out of their window, as crop does."""
    for layer in cache.layers:
        if not layer.is_initialized or layer.keys.numel() == 0:
            continue
        past = layer.keys.shape[-2] - fed
        index = torch.tensor(keep, device=layer.keys.device) + past
        layer.keys, layer.values = (_keep_rows(states, past, index) for states in (layer.keys, layer.values))
        if getattr(layer, "is_sliding", False):
            layer.cumulative_length += len(keep) - fed
            if layer.cumulative_length >= layer.sliding_window:
                layer.keys = layer.keys[:, :, -layer.sliding_window + 1 :, :]
                layer.values = layer.values[:, :, -layer.sliding_window + 1 :, :]


def _keep_rows(states: Tensor, past: int, index: Tensor) -> Tensor:
    """states [B, H, past + fed, D] -> the past, then the rows `index` of it. Written in place where
    it may be, so a layer's states stay in its buffer (tjdkit.decoding.kv_buffers)."""
    kept = states.index_select(-2, index)  # [B, H, len(index), D]
    if not writable(states):
        return torch.cat([states[..., :past, :], kept], dim=-2)
    states[..., past : past + len(index), :] = kept
    return states[..., : past + len(index), :]


def verify_tree(model, cache, tree: TokenTree, first_chunk: int, ids: Tensor, out: list[int], eos,
                sampling: Sampling) -> tuple[list[int], list[int], Tensor, int]:
    """Greedy verification of `tree` (root: the last chosen token) in one forward.
    -> (new tokens: the accepted drafts then the model's own token, the accepted node path
    (root first), the hidden states of those nodes [1 + accepted, D], output rows computed)."""
    device = ids.device
    masks, positions = tree_masks(model, cache, tree, device)
    feed = torch.tensor([tree.tokens], dtype=ids.dtype, device=device)  # [1, n]
    hidden = model.base_model(input_ids=feed, attention_mask=masks, position_ids=positions, cache=cache,
                              use_cache=True).last_hidden_state[0]  # [n, D]
    logits = LazyLogits(model, hidden, first_chunk)
    path, new = [0], []
    while True:
        if sampling.argmax_only:  # only the argmax is read: the screen where it pays
            token = logits.token(path[-1])
        else:
            token = int(sampling.penalise(logits[path[-1]], penalty_context(ids, out + new)).argmax())
        new.append(token)
        child: Optional[int] = tree.children[path[-1]].get(token)
        if child is None:  # the model's own token: not in the tree, so it ends the step
            break
        path.append(child)
        if token in eos:  # an accepted end-of-sequence draft ends the generation
            break
    compact_cache(cache, len(tree), path)
    return new, path, hidden[path], logits.computed


def branch_match(branch: list[int], new: list[int]) -> int:
    """How many of a branch's drafts the model accepts, given what it chose (`new`: accepted drafts,
    then its own token): the length of their common prefix."""
    count = 0
    for draft, chosen in zip(branch, new):
        if draft != chosen:
            break
        count += 1
    return count
