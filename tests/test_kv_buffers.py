"""In-place KV cache layers (tjdkit.decoding.kv_buffers) against transformers' own layers, the
independent truth: every update, crop and window trim leaves the same keys and values and returns
the same states, while a step writes into the same buffer instead of copying the context."""

import importlib

import pytest
import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from tjdkit.decoding import generate, new_cache
from tjdkit.decoding.kv_buffers import BufferedLayer, BufferedSlidingWindowLayer
from tjdkit.decoding.tree import compact_cache
from tjdkit.models import load_model

WINDOW = 8


def pair(sliding: bool):
    if sliding:
        return DynamicSlidingWindowLayer(sliding_window=WINDOW), BufferedSlidingWindowLayer(sliding_window=WINDOW)
    return DynamicLayer(), BufferedLayer()


def states(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(1, 2, n, 4, generator=generator), torch.randn(1, 2, n, 4, generator=generator)


def same(reference, buffered, returned_reference, returned_buffered) -> None:
    assert torch.equal(reference.keys, buffered.keys) and torch.equal(reference.values, buffered.values)
    assert all(torch.equal(a, b) for a, b in zip(returned_reference, returned_buffered))
    assert reference.get_seq_length() == buffered.get_seq_length()
    for query in (1, 3):
        assert reference.get_mask_sizes(query) == buffered.get_mask_sizes(query)


@pytest.mark.parametrize("sliding", [False, True])
@pytest.mark.parametrize("record_past", [False, True])
@pytest.mark.parametrize("mode", ["no_grad", "inference"])
def test_updates_and_crops_match_transformers_layers(sliding, record_past, mode):
    """A prefill, then steps of 1-5 tokens with rollbacks of part of each (as verify does), well past
    the window and past several buffer regrowths."""
    generator = torch.Generator().manual_seed(0)
    reference, buffered = pair(sliding)
    context = torch.inference_mode() if mode == "inference" else torch.no_grad()
    with context:
        for layer in (reference, buffered):
            if record_past and sliding:
                layer.activate_past_recording()
        new = states(5, generator)
        same(reference, buffered, reference.update(*new), buffered.update(*new))
        for step in range(400):
            fed = 1 + step % 5
            new = states(fed, generator)
            same(reference, buffered, reference.update(*new), buffered.update(*new))
            if record_past or not sliding:
                rejected = step % fed
                reference.crop(-rejected)
                buffered.crop(-rejected)
                same(reference, buffered, (), ())


def test_a_step_writes_into_the_buffer_instead_of_copying_the_context():
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for sliding in (False, True):
            layer = pair(sliding)[1]
            layer.update(*states(20, generator))
            buffer = layer._key_buffer
            for _ in range(10):
                keys, _ = layer.update(*states(1, generator))
                assert layer._key_buffer is buffer
                assert keys.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


def test_keys_replaced_from_outside_are_taken_into_a_new_buffer():
    """A reorder or batch select puts a new tensor in `keys`; the next update starts from it."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        reference, buffered = pair(False)
        for layer in (reference, buffered):
            layer.update(*states(6, generator.manual_seed(1)))
            layer.reorder_cache(torch.tensor([0]))
            layer.keys = layer.keys.flip(-2).contiguous()
        new = states(2, generator)
        same(reference, buffered, reference.update(*new), buffered.update(*new))


def test_tree_compaction_matches_transformers_layers():
    """compact_cache keeps some fed tree nodes: in place in a buffer, by concatenation elsewhere."""
    from transformers import DynamicCache

    model, _ = load_model("tiny-gemma3")  # one sliding layer (a window of 32), one full
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        caches = [DynamicCache(config=model.config), new_cache(model)]
        for cache in caches:
            cache.layers[0].activate_past_recording()
        for step in range(60):
            fed = 2 + step % 4
            keep = list(range(0, fed, 2))
            for index in range(2):
                new = states(fed, generator.manual_seed(step * 2 + index))
                returned = [cache.layers[index].update(*new) for cache in caches]
                same(caches[0].layers[index], caches[1].layers[index], *returned)
            for cache in caches:
                compact_cache(cache, fed, keep)
            for reference, buffered in zip(*(cache.layers for cache in caches)):
                same(reference, buffered, (), ())


def test_updates_that_autograd_records_keep_their_graph():
    """With gradients on, the layer concatenates as transformers does, so backward works."""
    keys = torch.randn(1, 1, 3, 4, requires_grad=True)
    layer = BufferedLayer()
    full_keys, _ = layer.update(keys, keys.detach() * 2)
    full_keys, _ = layer.update(keys * 3, keys.detach())
    full_keys.sum().backward()
    assert torch.equal(keys.grad, torch.full_like(keys, 4.0))


def test_a_buffer_made_in_inference_mode_is_not_written_outside_it():
    generator = torch.Generator().manual_seed(0)
    reference, buffered = pair(False)
    with torch.inference_mode():
        first = states(4, generator)
        reference.update(*first)
        buffered.update(*first)
    with torch.no_grad():
        new = states(1, generator)
        same(reference, buffered, reference.update(*new), buffered.update(*new))


def test_decoding_caches_are_buffered_and_match_transformers_caches(monkeypatch):
    """Greedy decoding on tiny Gemma 3 (a sliding window of 32, crossed here) with tjdkit's cache
    equals decoding with transformers' own DynamicCache, token for token."""
    from transformers import DynamicCache

    generate_module = importlib.import_module("tjdkit.decoding.generate")  # the package's `generate` is the function
    model, _ = load_model("tiny-gemma3")
    cache = new_cache(model)
    assert {type(layer) for layer in cache.layers} == {BufferedLayer, BufferedSlidingWindowLayer}
    prompt = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    ours, _ = generate(model, prompt, mode="ar", max_new_tokens=40)
    monkeypatch.setattr(generate_module, "new_cache", lambda model: DynamicCache(config=model.config))
    theirs, _ = generate(model, prompt, mode="ar", max_new_tokens=40)
    assert ours == theirs and len(ours) == 40
