"""Decoding: each mode checked against an independent, deliberately naive reference.

References recompute the whole sequence with no cache at every step, so cache handling
(including Gemma 3's 32-token sliding window, crossed by every long test here) is checked
against plain full-sequence forwards.
"""

import math

import pytest
import torch

from tjdkit.decoding import DecodeStats, acceptance, generate
from tjdkit.errors import TjdkitError
from tjdkit.heads import build_head
from tjdkit.models import load_model
from tjdkit.windows import last_hidden

MODELS = ["tiny-llama", "tiny-gemma3", "tiny-gpt2"]
N = 40  # new tokens in the long tests: prompt + N > 40 crosses Gemma 3's sliding window


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in MODELS}


def prompt(tokenizer, text="The quick brown fox jumps over the lazy dog."):
    return torch.tensor([tokenizer(text).input_ids])  # [1, T]


def sizes(model):
    config = model.config.get_text_config()
    return config.hidden_size, config.vocab_size


def lm_head_weight(model):
    return model.get_output_embeddings().weight.detach()


def joint_head(model, name="cp", horizon=3, seed=0):
    """A head whose drafts differ from the model's greedy chain: noisy projections and mixture."""
    D, V = sizes(model)
    torch.manual_seed(seed)
    head = build_head(
        name, hidden_size=D, vocab_size=V, rank=3, horizon=horizon, lm_head_weight=lm_head_weight(model), init_noise=2.0
    )
    if name == "cp":
        with torch.no_grad():
            head.mix.weight.normal_(0, 1.0)
    return head.eval()


def greedy_no_cache(model, ids, n):
    """The model's greedy continuation, recomputing the full sequence at every step."""
    out = []
    for _ in range(n):
        token = int(model(ids).logits[0, -1].argmax())
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def draft_no_cache(model, head, ids, n, eos=()):
    """Joint decoding without a cache: draft H greedily from the last hidden state of the whole sequence."""
    out, steps = [], 0
    while len(out) < n:
        hidden = last_hidden(model, ids, torch.ones_like(ids))[:, -1]  # [1, D]
        chunk = head.draft(hidden)[0][0].tolist()[: n - len(out)]
        for i, token in enumerate(chunk):
            if token in eos:
                chunk = chunk[: i + 1]
                break
        out += chunk
        steps += 1
        ids = torch.cat([ids, torch.tensor([chunk])], dim=1)
        if chunk[-1] in eos:
            break
    return out, steps


def first_new_token(tokens, start):
    """(index, token) of the first token at or after `start` that does not occur earlier."""
    for k in range(start, len(tokens)):
        if tokens[k] not in tokens[:k]:
            return k, tokens[k]
    raise AssertionError(f"no fresh token after {start} in {tokens}")


# ---- ar ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_ar_greedy_matches_no_cache_loop(models, name):
    model, tokenizer = models[name]
    ids = prompt(tokenizer)
    tokens, stats = generate(model, ids, max_new_tokens=N)
    assert tokens == greedy_no_cache(model, ids, N)
    assert ids.shape[1] + N > 40
    assert (stats.mode, stats.new_tokens, stats.forwards, stats.accepted) == ("ar", N, 1 + N, [])
    assert stats.tokens_per_forward == 1.0 and stats.seconds > 0


@pytest.mark.parametrize("name", MODELS)
def test_ar_greedy_matches_hf_generate(models, name):
    model, tokenizer = models[name]
    ids = prompt(tokenizer, "Hello! How are you today?")
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=N, pad_token_id=pad)
    tokens, _ = generate(model, ids, max_new_tokens=N, eos_token_ids=eos)
    assert tokens == hf[0, ids.shape[1] :].tolist()


def test_ar_sampling_is_reproducible(models):
    model, tokenizer = models["tiny-llama"]
    ids = prompt(tokenizer)

    def sample(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return generate(model, ids, max_new_tokens=20, temperature=1.0, generator=g, **kw)[0]

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)
    assert sample(0, top_k=5) == sample(0, top_k=5)
    assert sample(3, top_k=1) == generate(model, ids, max_new_tokens=20)[0]  # top-1 sampling is greedy


# ---- draft --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_draft_with_exact_stp_head_is_ar_greedy(models, name):
    model, tokenizer = models[name]
    D, V = sizes(model)
    head = build_head("stp", hidden_size=D, vocab_size=V, lm_head_weight=lm_head_weight(model), init_noise=0.0)
    ids = prompt(tokenizer)
    tokens, stats = generate(model, ids, mode="draft", head=head, max_new_tokens=N)
    assert tokens == generate(model, ids, max_new_tokens=N)[0]
    assert stats.forwards == 1 + N and stats.accepted == [1] * N and stats.tokens_per_forward == 1.0


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("head_name", ["cp", "multihead"])
def test_draft_matches_no_cache_reference(models, name, head_name):
    model, tokenizer = models[name]
    H = 3
    head = joint_head(model, head_name, horizon=H)
    ids = prompt(tokenizer)
    tokens, stats = generate(model, ids, mode="draft", head=head, max_new_tokens=N)
    expect, steps = draft_no_cache(model, head, ids, N)
    assert tokens == expect
    assert len(set(tokens)) > 3  # the head is not just repeating one token
    # N = 40 is not a multiple of H: 13 full chunks, then one cut to a single token
    assert stats.accepted == [H] * (N // H) + [N % H]
    assert stats.forwards == 1 + math.ceil(N / H) == 1 + steps
    assert stats.tokens_per_forward == N / math.ceil(N / H)


def test_draft_sampling_is_reproducible(models):
    model, tokenizer = models["tiny-gemma3"]
    head = joint_head(model)
    ids = prompt(tokenizer)

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, ids, mode="draft", head=head, max_new_tokens=N, temperature=1.0, generator=g)[0]

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)


# ---- stopping -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ar", "draft"])
def test_stops_after_eos_and_keeps_it(models, mode):
    model, tokenizer = models["tiny-llama"]
    H = 3
    head = joint_head(model, horizon=H)
    ids = prompt(tokenizer)
    free, _ = generate(model, ids, mode=mode, head=head, max_new_tokens=N)
    k, eos = first_new_token(free, 4)  # for draft: k >= 4 lies in the second chunk or later
    tokens, stats = generate(model, ids, mode=mode, head=head, max_new_tokens=N, eos_token_ids=[eos, 10**9])
    assert tokens == free[: k + 1]
    if mode == "draft":
        assert stats.accepted == [H] * (k // H) + [k % H + 1]  # the EOS chunk is cut just after EOS
        assert stats.forwards == 1 + k // H + 1
    else:
        assert stats.forwards == 1 + k + 1


@pytest.mark.parametrize("mode", ["ar", "draft"])
def test_max_new_tokens_is_exact(models, mode):
    model, tokenizer = models["tiny-gpt2"]
    H = 3
    head = joint_head(model, horizon=H)
    ids = prompt(tokenizer)
    longest, _ = generate(model, ids, mode=mode, head=head, max_new_tokens=10)
    for n in (1, 2, 3, 4, 7):
        tokens, stats = generate(model, ids, mode=mode, head=head, max_new_tokens=n)
        assert tokens == longest[:n] and stats.new_tokens == n
        assert stats.forwards == 1 + (n if mode == "ar" else math.ceil(n / H))
    tokens, stats = generate(model, ids, mode=mode, head=head, max_new_tokens=0)
    assert tokens == [] and stats.forwards == 0 and stats.tokens_per_forward == 0.0


# ---- acceptance ---------------------------------------------------------------------------


def brute_force_acceptance(model, head, ids, continuation):
    """Walk the continuation like a greedy speculative decoder, one full no-cache forward per step."""
    H, n, i, accepted = head.horizon, len(continuation), 0, []
    while i < n:
        seq = torch.cat([ids, torch.tensor([continuation[:i]], dtype=torch.long)], dim=1)
        drafted = head.draft(last_hidden(model, seq, torch.ones_like(seq))[:, -1])[0][0].tolist()
        a = 0
        # the last token of the continuation is always the verifier's, never a draft's
        while a < H and i + a < n - 1 and drafted[a] == continuation[i + a]:
            a += 1
        accepted.append(a)
        i += a + 1
    return accepted


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("head_name", ["cp", "multihead"])
def test_acceptance_matches_brute_force(models, name, head_name):
    model, tokenizer = models[name]
    # a weakly perturbed head, so that it agrees with the model sometimes but not always
    D, V = sizes(model)
    torch.manual_seed(1)
    head = build_head(
        head_name, hidden_size=D, vocab_size=V, rank=2, horizon=3, lm_head_weight=lm_head_weight(model), init_noise=0.5
    )
    ids = prompt(tokenizer)
    continuation, _ = generate(model, ids, max_new_tokens=N)
    stats = acceptance(model, head, ids, continuation)
    expect = brute_force_acceptance(model, head, ids, continuation)
    assert stats.accepted == expect
    assert stats.new_tokens == N == sum(a + 1 for a in expect)
    assert stats.forwards == 1 + len(expect)
    assert stats.tokens_per_forward == pytest.approx(sum(a + 1 for a in expect) / len(expect))
    assert 0 < sum(expect) < 3 * len(expect)  # neither all rejected nor all accepted


def test_acceptance_of_the_heads_own_drafts_is_perfect(models):
    model, tokenizer = models["tiny-gemma3"]
    H, steps = 3, 12
    head = joint_head(model, horizon=H)
    ids = prompt(tokenizer)
    seq, continuation = ids, []
    for step in range(steps):
        drafted = head.draft(last_hidden(model, seq, torch.ones_like(seq))[:, -1])[0][0].tolist()
        verifier = (drafted[0] + 1 + step) % sizes(model)[1]  # any token: the verifier's pick is not scored
        continuation += drafted + [verifier]
        seq = torch.cat([ids, torch.tensor([continuation])], dim=1)
    stats = acceptance(model, head, ids, continuation)
    assert stats.accepted == [H] * steps
    assert stats.tokens_per_forward == H + 1
    # cutting the last verifier token: the final step's last draft token becomes the verifier's
    stats = acceptance(model, head, ids, continuation[:-1])
    assert stats.accepted == [H] * (steps - 1) + [H - 1]
    assert acceptance(model, head, ids, []).accepted == []


# ---- errors and stats ---------------------------------------------------------------------


def test_bad_arguments_raise_tjdkit_error(models):
    model, tokenizer = models["tiny-llama"]
    ids = prompt(tokenizer)
    head = joint_head(model)
    with pytest.raises(TjdkitError, match="mode"):
        generate(model, ids, mode="beam")
    with pytest.raises(TjdkitError, match="needs a head"):
        generate(model, ids, mode="draft")
    with pytest.raises(TjdkitError, match=r"\[1, T\]"):
        generate(model, ids.repeat(2, 1))
    with pytest.raises(TjdkitError, match="max_new_tokens"):
        generate(model, ids, max_new_tokens=-1)
    with pytest.raises(TjdkitError, match="temperature"):
        generate(model, ids, temperature=-0.5)
    with pytest.raises(TjdkitError, match="top_k"):
        generate(model, ids, mode="draft", head=head, temperature=1.0, top_k=5)


def test_stats_properties():
    stats = DecodeStats(mode="draft", new_tokens=10, forwards=5, seconds=2.0, accepted=[3, 3, 3, 1])
    assert stats.decode_forwards == 4 and stats.tokens_per_forward == 2.5 and stats.tokens_per_second == 5.0
    assert DecodeStats(mode="ar").tokens_per_forward == 0.0
