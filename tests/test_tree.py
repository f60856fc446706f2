"""Token-tree verification against the independent truth: for every node, a plain no-cache forward of
the prompt followed by the node's own path; after compaction, the cache must be the cache of the
accepted sequence (checked by continuing from it)."""

import pytest
import torch

from tjdkit.decoding import generate
from tjdkit.decoding.forward import hidden_states, new_cache, output_logits
from tjdkit.decoding.sampling import Sampling
from tjdkit.decoding.tree import TokenTree, branch_match, compact_cache, tree_masks, tree_supported, verify_tree
from tjdkit.models import load_model

MODELS = ["tiny-llama", "tiny-gemma3", "tiny-gpt2"]


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in MODELS}


def no_cache_logits(model, tokens):
    """Next-token logits after `tokens`, from one plain forward of the whole sequence."""
    return model(torch.tensor([tokens])).logits[0, -1].float()


def test_the_trie_is_depth_first_and_shares_prefixes():
    tree = TokenTree(5, [[1, 2, 3], [1, 4], [7, 8], [1, 2, 9]])
    assert tree.tokens == [5, 1, 2, 3, 9, 4, 7, 8]
    assert tree.parents == [-1, 0, 1, 2, 2, 1, 0, 6]
    assert tree.depths == [0, 1, 2, 3, 3, 2, 1, 2]
    assert tree.children[0] == {1: 1, 7: 6} and tree.children[2] == {3: 3, 9: 4}
    ancestors = tree.ancestors()
    assert ancestors[4].nonzero().flatten().tolist() == [0, 1, 2, 4]
    assert ancestors[7].nonzero().flatten().tolist() == [0, 6, 7]
    assert TokenTree(5, []).tokens == [5]


def test_branch_match_counts_the_drafts_the_model_keeps():
    assert branch_match([1, 2, 3], [1, 2, 9]) == 2
    assert branch_match([1, 2], [1, 2, 9]) == 2
    assert branch_match([4], [1, 2, 9]) == 0
    assert branch_match([], [1]) == 0


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("eager", [False, True])
def test_every_tree_node_sees_exactly_its_own_path(models, name, eager):
    """Past the 32-token sliding window of tiny-gemma3: each node's logits equal a no-cache forward of
    the prompt and its path, in both mask formats (sdpa's boolean, eager's additive)."""
    model, _ = models[name]
    before = model.config._attn_implementation
    if eager:
        model.set_attn_implementation("eager")
    try:
        torch.manual_seed(0)
        vocab = model.config.get_text_config().vocab_size
        prompt = torch.randint(vocab, (40,)).tolist()
        cache = new_cache(model)
        with torch.no_grad():
            hidden_states(model, torch.tensor([prompt[:-1]]), cache)
            cache.activate_past_recording()
            assert tree_supported(model, cache)
            tree = TokenTree(prompt[-1], [[11, 12, 13], [11, 14], [15, 16, 17, 18], [19]])
            masks, positions = tree_masks(model, cache, tree, torch.device("cpu"))
            hidden = model.base_model(input_ids=torch.tensor([tree.tokens]), attention_mask=masks,
                                      position_ids=positions, cache=cache, use_cache=True).last_hidden_state[0]
            logits = output_logits(model, hidden)
            for node in range(len(tree)):
                path, at = [], node
                while at >= 0:
                    path.insert(0, tree.tokens[at])
                    at = tree.parents[at]
                expected = no_cache_logits(model, prompt[:-1] + path)
                torch.testing.assert_close(logits[node], expected, atol=2e-4, rtol=2e-4)

            # keep the root, 15 and 16 (nodes 0, 6, 7): the cache must be that of prompt + [15, 16]
            keep = [0, tree.tokens.index(15), tree.tokens.index(16)]
            compact_cache(cache, len(tree), keep)
            assert cache.get_seq_length() == len(prompt) + 2
            after = output_logits(model, hidden_states(model, torch.tensor([[21, 22]]), cache))
            for offset, token in enumerate([21, 22]):
                expected = no_cache_logits(model, prompt + [15, 16, 21, 22][: 3 + offset])
                torch.testing.assert_close(after[offset], expected, atol=2e-4, rtol=2e-4)
    finally:
        model.set_attn_implementation(before)


@pytest.mark.parametrize("name", MODELS)
def test_tree_verification_accepts_the_greedy_path(models, name):
    """A tree holding the model's greedy continuation on one branch and decoys on others: the walk
    takes the greedy branch, then the model's own token; the cache continues as greedy decoding."""
    model, _ = models[name]
    torch.manual_seed(1)
    vocab = model.config.get_text_config().vocab_size
    prompt = torch.randint(vocab, (36,)).tolist()
    greedy = generate(model, torch.tensor([prompt]), mode="ar", max_new_tokens=8)[0]
    cache = new_cache(model)
    with torch.no_grad():
        hidden_states(model, torch.tensor([prompt]), cache)  # the prompt; greedy[0] is the root
        cache.activate_past_recording()
        decoy = [(token + 1) % vocab for token in greedy[1:4]]
        tree = TokenTree(greedy[0], [decoy, greedy[1:3] + [decoy[2]], [greedy[1], decoy[1]]])
        ids = torch.tensor([prompt])
        new, path, hidden, rows = verify_tree(model, cache, tree, 1, ids, greedy[:1], (), Sampling())
    assert new == greedy[1:4]  # two accepted drafts, then the model's own token
    assert len(path) == 3 and rows >= 3 and hidden.shape[0] == 3
    assert cache.get_seq_length() == len(prompt) + 3  # the root and two accepted drafts
