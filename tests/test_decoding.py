"""Decoding: each mode checked against an independent, deliberately naive reference.

References recompute the whole sequence with no cache at every step, so cache handling
(including Gemma 3's 32-token sliding window, crossed by every long test here) is checked
against plain full-sequence forwards.
"""

import math

import pytest
import torch

from tjdkit.decoding import DecodeStats, acceptance, acceptance_rates, generate
from tjdkit.errors import TjdkitError
from tjdkit.heads import build_head
from tjdkit.models import load_model
from tjdkit.heads.windows import last_hidden

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


def weak_head(model, name="cp", horizon=3, seed=1):
    """A weakly perturbed head: it agrees with the model sometimes but not always."""
    D, V = sizes(model)
    torch.manual_seed(seed)
    return build_head(
        name, hidden_size=D, vocab_size=V, rank=2, horizon=horizon, lm_head_weight=lm_head_weight(model), init_noise=0.5
    ).eval()


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
    assert (stats.mode, stats.new_tokens, stats.forwards, stats.accepted) == ("ar", N, N, [])
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


@pytest.mark.parametrize("mode", ["ar", "verify"])
def test_repetition_penalty_matches_hf_generate(models, mode):
    model, tokenizer = models["tiny-gemma3"]
    ids = prompt(tokenizer)
    hf = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=N, repetition_penalty=1.3, pad_token_id=0
    )[0, ids.shape[1] :].tolist()
    tokens, _ = generate(model, ids, mode=mode, head=weak_head(model), max_new_tokens=N, repetition_penalty=1.3)
    assert tokens == hf and tokens != generate(model, ids, max_new_tokens=N)[0]


def test_sampling_distribution_matches_transformers_processors():
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from tjdkit.decoding import Sampling

    torch.manual_seed(0)
    logits = torch.randn(300) * 3
    context = torch.randint(0, 300, (40,))
    for temperature, top_k, top_p, penalty in [(1.0, None, None, 1.0), (0.7, 50, 0.9, 1.2), (1.3, 0, 0.5, 0.8)]:
        sampling = Sampling(temperature, top_k, top_p, penalty)
        ours = sampling.probs(sampling.penalise(logits, context))
        chain = [RepetitionPenaltyLogitsProcessor(penalty), TemperatureLogitsWarper(temperature)]
        chain += [TopKLogitsWarper(top_k)] if top_k else []
        chain += [TopPLogitsWarper(top_p)] if top_p else []
        theirs = torch.softmax(LogitsProcessorList(chain)(context[None], logits[None].clone())[0], dim=-1)
        assert torch.allclose(ours, theirs, atol=1e-6), (temperature, top_k, top_p, penalty)


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
    assert stats.forwards == N and stats.accepted == [1] * N and stats.tokens_per_forward == 1.0


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
    assert stats.forwards == math.ceil(N / H) == steps
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


@pytest.mark.parametrize("mode", ["ar", "draft", "verify"])
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
        assert stats.forwards == k // H + 1
    elif mode == "ar":
        assert stats.forwards == k + 1
    else:
        assert stats.forwards == 1 + len(stats.accepted)


@pytest.mark.parametrize("mode", ["ar", "draft", "verify"])
def test_max_new_tokens_is_exact(models, mode):
    model, tokenizer = models["tiny-gpt2"]
    H = 3
    head = joint_head(model, horizon=H)
    ids = prompt(tokenizer)
    longest, _ = generate(model, ids, mode=mode, head=head, max_new_tokens=10)
    for n in (1, 2, 3, 4, 7):
        tokens, stats = generate(model, ids, mode=mode, head=head, max_new_tokens=n)
        assert tokens == longest[:n] and stats.new_tokens == n
        if mode != "verify":
            assert stats.forwards == (n if mode == "ar" else math.ceil(n / H))
    tokens, stats = generate(model, ids, mode=mode, head=head, max_new_tokens=0)
    assert tokens == [] and stats.forwards == 0 and stats.tokens_per_forward == 0.0


# ---- verify -------------------------------------------------------------------------------


class OracleHead:
    """A stand-in head that drafts the model's true greedy continuation, spoiled on purpose.

    It finds where it is by matching the hidden state it is given against the hidden
    states of prompt + reference (so a wrong `state` handed over by the decoder shows up as
    wrong drafts), then drafts reference[i+1 : i+H], spoiling draft (call % H) on each call:
    every acceptance length 0..H-1 occurs.
    """

    def __init__(self, model, ids, reference, horizon, vocab_size):
        full = torch.cat([ids, torch.tensor([reference])], dim=1)
        self.hidden = last_hidden(model, full, torch.ones_like(full))[0]  # [T+N, D]
        self.start, self.reference, self.horizon, self.vocab_size = ids.shape[1] - 1, reference, horizon, vocab_size
        self.calls = 0

    def in_vocab(self, tokens):
        return torch.ones_like(tokens, dtype=torch.bool)

    def draft(self, hidden, greedy=True, temperature=1.0, generator=None, first=None, conditionals=True):
        self.calls += 1
        row = int((self.hidden - hidden).norm(dim=-1).argmin())
        i = row - self.start  # hidden row predicts reference[i]
        assert int(first) == self.reference[i]
        drafts = self.reference[i + 1 : i + self.horizon] + [0] * self.horizon
        spoil = self.calls % self.horizon
        if spoil >= 1:
            drafts[spoil - 1] = (drafts[spoil - 1] + 1) % self.vocab_size
        tokens = torch.tensor([[int(first)] + drafts[: self.horizon - 1]])
        return tokens, torch.nn.functional.one_hot(tokens, self.vocab_size).float()

    def draft_next_best(self, hidden, first, k):
        tokens, q = self.draft(hidden, first=first)
        best = q.topk(k, dim=-1)  # the drafts, then tokens of probability 0 (no other branch)
        return tokens, best.indices, best.values


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("head_name", ["cp", "multihead", "mps"])
def test_verify_greedy_is_ar_greedy(models, name, head_name, monkeypatch):
    from tjdkit.decoding import verify as verify_module

    monkeypatch.setattr(verify_module, "MAX_ALTERNATIVES", 0)  # single-path drafts: the steps acceptance() counts
    model, tokenizer = models[name]
    head = weak_head(model, head_name, horizon=4)
    ids = prompt(tokenizer)
    tokens, stats = generate(model, ids, mode="verify", head=head, max_new_tokens=N, drafter="head")
    assert tokens == greedy_no_cache(model, ids, N)
    assert stats.new_tokens == N == 1 + sum(a + 1 for a in stats.accepted)
    assert stats.forwards == 1 + len(stats.accepted)
    # the steps are exactly those of teacher-forced acceptance along the same output
    reference = acceptance(model, head, ids, tokens)
    assert (stats.accepted, stats.offered) == (reference.accepted, reference.offered)


@pytest.mark.parametrize("name", MODELS)
def test_verify_rolls_back_rejected_drafts(models, name):
    """Every acceptance length occurs, so every rollback size runs, across Gemma 3's sliding window."""
    model, tokenizer = models[name]
    H, n = 4, 60
    ids = prompt(tokenizer)
    reference = greedy_no_cache(model, ids, n)
    oracle = OracleHead(model, ids, reference, H, sizes(model)[1])
    tokens, stats = generate(model, ids, mode="verify", head=oracle, max_new_tokens=n, drafter="head")
    assert tokens == reference
    assert set(stats.accepted[:-2]) == {0, 1, 2, 3}  # the oracle spoils draft (call % H)
    assert stats.tau > 2.0 and oracle.calls == len(stats.accepted) - (stats.offered[-1] == 0)


def test_verify_logits_are_the_models_own_with_softcapping():
    """Soft-capping keeps the argmax but changes sampling: verify's logits must apply it."""
    from tjdkit.decoding.forward import hidden_states, new_cache, output_logits

    model, tokenizer = load_model("tiny-gemma3")
    model.config.get_text_config().final_logit_softcapping = 0.5
    ids = prompt(tokenizer)
    with torch.no_grad():
        logits = output_logits(model, hidden_states(model, ids, new_cache(model)))
        expect = model(ids).logits[0].float()
    assert logits.abs().max() <= 0.5 and torch.allclose(logits, expect, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
def test_kv_cache_rollback_matches_no_cache(models, name):
    """Feed chunks, crop random suffixes off, feed more: the logits equal a no-cache forward of what stayed."""
    from tjdkit.decoding.forward import hidden_states, new_cache, output_logits

    model, tokenizer = models[name]
    rng = torch.Generator().manual_seed(0)
    kept = prompt(tokenizer)
    cache = new_cache(model)
    hidden_states(model, kept, cache)
    cache.activate_past_recording()
    with torch.no_grad():
        for _ in range(25):  # ~60 tokens kept: crosses the 32-token window more than once
            chunk = torch.randint(0, sizes(model)[1], (1, 4), generator=rng)
            logits = output_logits(model, hidden_states(model, chunk, cache))
            keep = int(torch.randint(1, 5, (), generator=rng))
            cache.crop(-(4 - keep))
            kept = torch.cat([kept, chunk[:, :keep]], dim=1)
            full = model(kept).logits[0, -keep - 1 + keep :].float()  # logits at the last kept position
            assert torch.allclose(logits[keep - 1], full[-1], atol=1e-4)
            assert cache.get_seq_length() == kept.shape[1]
    assert kept.shape[1] > 2 * 32


@pytest.mark.parametrize("name", MODELS)
def test_a_long_prompt_is_prefilled_in_window_chunks_with_the_models_own_outputs(models, name, monkeypatch):
    """Gemma 3 (sliding window 32 here) takes a 100-token prompt in chunks of its window: the last logits equal
    a no-cache forward, and every mode's greedy text after it equals no-cache greedy decoding. Models without
    a window take the prompt whole."""
    from tjdkit.decoding import verify as verify_module
    from tjdkit.decoding.forward import new_cache, next_logits, prefill_chunk

    monkeypatch.setattr(verify_module, "MAX_ALTERNATIVES", 0)
    model, tokenizer = models[name]
    ids = torch.randint(3, sizes(model)[1], (1, 100), generator=torch.Generator().manual_seed(0))
    cache = new_cache(model)
    chunk = prefill_chunk(model, cache)
    assert chunk == (32 if name == "tiny-gemma3" else None)
    fed = []
    hook = model.base_model.register_forward_pre_hook(lambda _, args, kwargs: fed.append(kwargs["input_ids"].shape[1]),
                                                      with_kwargs=True)
    with torch.no_grad():
        logits = next_logits(model, ids, cache)
        hook.remove()
        assert fed == ([32, 32, 32, 4] if chunk else [100]) and cache.get_seq_length() == 100
        assert torch.allclose(logits, model(ids).logits[0, -1].float(), atol=1e-4)
    reference = greedy_no_cache(model, ids, 12)
    head = weak_head(model, "cp", horizon=3)
    for mode in ("ar", "verify"):
        assert generate(model, ids, mode=mode, head=head, max_new_tokens=12)[0] == reference, mode


def exact_distribution(model, ids, n, top_k, temperature):
    """{sequence: probability} of the model's first n tokens under tempered top-k sampling."""
    dist = {(): 1.0}
    for _ in range(n):
        grown = {}
        for seq, prob in dist.items():
            full = torch.cat([ids, torch.tensor([list(seq)], dtype=torch.long)], dim=1)
            logits = model(full).logits[0, -1].float()
            top = torch.topk(logits, top_k)
            probs = torch.softmax(top.values / temperature, dim=-1)
            for token, p in zip(top.indices.tolist(), probs.tolist()):
                grown[seq + (token,)] = prob * p
        dist = grown
    return dist


class DistortedHead:
    """A stand-in head whose conditionals are the model's own, distorted: flattened and spread
    over its top 3 tokens (the model samples from its top 2), so drafts are often wrong and
    sometimes impossible. It finds the prefix before `first` by matching hidden states."""

    def __init__(self, model, ids, prefixes, horizon, vocab_size):
        self.model, self.ids, self.horizon, self.vocab_size = model, ids, horizon, vocab_size
        self.prefixes = prefixes
        rows = [last_hidden(model, self._seq(prefix), torch.ones_like(self._seq(prefix)))[0, -1] for prefix in prefixes]
        self.hidden = torch.stack(rows)  # [P, D]

    def _seq(self, tokens):
        return torch.cat([self.ids, torch.tensor([list(tokens)], dtype=torch.long)], dim=1)

    def in_vocab(self, tokens):
        return torch.ones_like(tokens, dtype=torch.bool)

    def draft(self, hidden, greedy=True, temperature=1.0, generator=None, first=None, conditionals=True):
        prefix = list(self.prefixes[int((self.hidden - hidden).norm(dim=-1).argmin())]) + [int(first)]
        tokens, qs = [int(first)], [torch.zeros(self.vocab_size)]
        for _ in range(self.horizon - 1):
            logits = self.model(self._seq(prefix)).logits[0, -1].float()
            top = torch.topk(logits, 3)
            q = torch.zeros(self.vocab_size)
            q[top.indices] = torch.softmax(top.values * 0.3, dim=-1)
            token = int(torch.multinomial(q, 1, generator=generator))
            tokens.append(token)
            qs.append(q)
            prefix.append(token)
        return torch.tensor([tokens]), torch.stack(qs)[None]


def test_verify_sampling_follows_the_models_distribution(models):
    """Chi-square test of 4-token sequences sampled by verify against the model's exact distribution."""
    model, tokenizer = models["tiny-llama"]
    n, top_k, temperature, samples = 4, 2, 0.25, 1500  # a low temperature: p is far from the head's q
    ids = prompt(tokenizer, "Once upon a time")
    with torch.no_grad():
        exact = exact_distribution(model, ids, n, top_k, temperature)
        prefixes = sorted({seq[:k] for seq in exact for k in range(n - 1)}, key=len)
        head = DistortedHead(model, ids, prefixes, 3, sizes(model)[1])
    counts = dict.fromkeys(exact, 0)
    generator = torch.Generator().manual_seed(0)
    accepted = rejected = 0
    for _ in range(samples):
        tokens, stats = generate(
            model, ids, mode="verify", head=head, max_new_tokens=n, temperature=temperature, top_k=top_k, generator=generator,
            drafter="head",
        )
        counts[tuple(tokens)] += 1  # KeyError: a sequence the model cannot produce
        accepted += sum(stats.accepted)
        rejected += sum(o - a for o, a in zip(stats.offered, stats.accepted))
    assert accepted > 0.3 * samples and rejected > 0.3 * samples  # both paths of the rule ran often
    chi2 = sum((counts[s] - samples * p) ** 2 / (samples * p) for s, p in exact.items())
    assert chi2 < 37.7  # 15 degrees of freedom, p = 0.001
    tv = 0.5 * sum(abs(counts[s] / samples - p) for s, p in exact.items())
    assert tv < 0.06



# ---- acceptance ---------------------------------------------------------------------------


def brute_force_acceptance(model, head, ids, continuation):
    """Walk the continuation like greedy verify, one full no-cache forward per step."""
    H, n, i, accepted, offered = head.horizon, len(continuation), 0, [], []
    while i < n - 1:
        seq = torch.cat([ids, torch.tensor([continuation[:i]], dtype=torch.long)], dim=1)
        hidden = last_hidden(model, seq, torch.ones_like(seq))[:, -1]  # predicted continuation[i]
        drafted = head.draft(hidden, first=torch.tensor([continuation[i]]))[0][0].tolist()
        assert drafted[0] == continuation[i]
        o = min(H - 1, n - i - 2)  # the model supplies the token after the accepted drafts
        a = 0
        while a < o and drafted[1 + a] == continuation[i + 1 + a]:
            a += 1
        accepted.append(a)
        offered.append(o)
        i += a + 1
    return accepted, offered


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("head_name", ["cp", "multihead", "mps"])
def test_acceptance_matches_brute_force(models, name, head_name):
    model, tokenizer = models[name]
    head = weak_head(model, head_name)
    ids = prompt(tokenizer)
    continuation, _ = generate(model, ids, max_new_tokens=N)
    stats = acceptance(model, head, ids, continuation)
    expect, offered = brute_force_acceptance(model, head, ids, continuation)
    assert (stats.accepted, stats.offered) == (expect, offered)
    assert stats.new_tokens == N == 1 + sum(a + 1 for a in expect)
    assert stats.forwards == 1 + len(expect)
    assert stats.tau == pytest.approx(sum(a + 1 for a in expect) / len(expect))
    assert sum(offered) > 0


@pytest.mark.parametrize("head_name", ["cp", "mps"])
def test_acceptance_follows_a_scripted_continuation(models, head_name):
    """Build the continuation from the head's own drafts, spoiling draft a_s + 1 at step s:
    the steps must accept exactly a_s drafts."""
    model, tokenizer = models["tiny-gemma3"]
    H, V = 4, sizes(model)[1]
    head = joint_head(model, head_name, horizon=H)
    ids = prompt(tokenizer)
    script = [s % H for s in range(14)]  # 0..H-1 accepted drafts, cycling
    continuation = [7]
    for a in script:
        seq = torch.cat([ids, torch.tensor([continuation[:-1]], dtype=torch.long)], dim=1)
        hidden = last_hidden(model, seq, torch.ones_like(seq))[:, -1]
        drafted = head.draft(hidden, first=torch.tensor([continuation[-1]]))[0][0].tolist()
        spoiled = (drafted[1 + a] + 1) % V if a < H - 1 else (drafted[-1] + 1) % V  # the model's token
        continuation += drafted[1 : 1 + a] + [spoiled]
    tail = [1, 2, 3, 4]  # room after the script, so that max length never limits its steps
    stats = acceptance(model, head, ids, continuation + tail)
    steps = len(script)
    assert stats.accepted[:steps] == script and stats.offered[:steps] == [H - 1] * steps
    assert stats.acceptance_by_position()[0] >= 0  # defined
    assert acceptance_rates(script, [H - 1] * steps) == pytest.approx([10 / 14, 6 / 14, 3 / 14])
    # at the very end the room limits the drafts: the model always supplies the last token
    stats = acceptance(model, head, ids, continuation)
    assert stats.offered[-2:] == [2, 1] and stats.accepted == script
    assert acceptance(model, head, ids, []).accepted == []
    assert acceptance(model, head, ids, [5]).accepted == []  # the prefill's token alone: no verify step


# ---- errors and stats ---------------------------------------------------------------------


def test_bad_arguments_raise_tjdkit_error(models):
    model, tokenizer = models["tiny-llama"]
    ids = prompt(tokenizer)
    head = joint_head(model)
    with pytest.raises(TjdkitError, match="mode"):
        generate(model, ids, mode="beam")
    with pytest.raises(TjdkitError, match="needs a head"):
        generate(model, ids, mode="draft")
    with pytest.raises(TjdkitError, match="verify decoding needs a head"):
        generate(model, ids, mode="verify")
    with pytest.raises(TjdkitError, match=r"\[1, T\]"):
        generate(model, ids.repeat(2, 1))
    with pytest.raises(TjdkitError, match="max_new_tokens"):
        generate(model, ids, max_new_tokens=-1)
    with pytest.raises(TjdkitError, match="temperature"):
        generate(model, ids, temperature=-0.5)
    with pytest.raises(TjdkitError, match="top_k"):
        generate(model, ids, mode="draft", head=head, temperature=1.0, top_k=5)


def test_stats_properties():
    stats = DecodeStats(mode="draft", new_tokens=10, forwards=4, seconds=2.0, accepted=[3, 3, 3, 1])
    assert stats.tokens_per_forward == 2.5 and stats.tokens_per_second == 5.0 and stats.tau == 2.5
    assert DecodeStats(mode="ar").tokens_per_forward == 0.0
    # verify: 1 (prefill) + (3+1) + (0+1) + (2+1) + (1+1) tokens over 1 + 4 forwards
    stats = DecodeStats(mode="verify", new_tokens=11, forwards=5, accepted=[3, 0, 2, 1], offered=[3, 3, 3, 1])
    assert stats.tau == 2.5 and stats.tokens_per_forward == 11 / 5
    # draft 1 accepted in 3 of 4 steps; draft 2 in 2 of the 3 that offered it; draft 3 in 1 of 3
    assert stats.acceptance_by_position() == pytest.approx([3 / 4, 2 / 3, 1 / 3])
    assert DecodeStats(mode="verify").tau == 0.0 and DecodeStats(mode="verify").acceptance_by_position() == []


# ---- prompt-lookup drafts --------------------------------------------------------------------


def brute_force_lookup(tokens, limit, max_ngram=2):
    """transformers' PromptLookupCandidateGenerator rule, spelled out: the longest n-gram first, its
    first earlier occurrence, the tokens after it."""
    for n in range(max_ngram, 0, -1):
        if len(tokens) <= n:
            continue
        matches = [i for i in range(len(tokens) - n) if tokens[i : i + n] == tokens[-n:]]
        for i in matches:
            if tokens[i + n : i + n + limit]:
                return tokens[i + n : i + n + limit]
    return []


def test_lookup_drafts_follow_the_prompt_lookup_rule():
    from tjdkit.decoding.drafters import lookup_drafts

    rng = torch.Generator().manual_seed(0)
    for _ in range(300):
        tokens = torch.randint(0, 4, (int(torch.randint(1, 14, (1,), generator=rng)),), generator=rng).tolist()
        limit = int(torch.randint(1, 6, (1,), generator=rng))
        assert lookup_drafts(tokens, limit) == brute_force_lookup(tokens, limit), tokens
        for max_ngram in (1, 3, 4):  # verify's own copies match longer tails by the same rule
            assert lookup_drafts(tokens, limit, max_ngram) == brute_force_lookup(tokens, limit, max_ngram), (tokens, max_ngram)
    assert lookup_drafts([5, 6, 7, 5, 6], 10) == [7, 5, 6] and lookup_drafts([1, 2, 3], 10) == []
    assert lookup_drafts([1, 2, 1, 2], 0) == []


def test_tail_index_matches_the_lookup_rule_as_the_sequence_grows():
    """verify's incremental index answers what a scan of the whole sequence answers, at every length."""
    from tjdkit.decoding.drafters import TailIndex, lookup_match

    rng = torch.Generator().manual_seed(1)
    for max_ngram in (1, 2, 4):
        for _ in range(40):
            tokens = torch.randint(0, 3, (int(torch.randint(1, 40, (1,), generator=rng)),), generator=rng).tolist()
            prompt = int(torch.randint(1, len(tokens) + 1, (1,), generator=rng))
            index = TailIndex(max_ngram, tokens[:prompt])
            at = prompt
            while True:
                assert index.tokens == tokens[:at]
                assert index.match() == lookup_match(tokens[:at], max_ngram), (tokens[:at], max_ngram)
                if at == len(tokens):
                    break
                step = int(torch.randint(1, 5, (1,), generator=rng))  # accepted drafts arrive several at a time
                index.extend(tokens[at : at + step])
                at = min(at + step, len(tokens))


def repeating_prompt(model, tokenizer, text="The quick brown fox jumps over the lazy dog."):
    """The prompt, the model's own greedy continuation, then the prompt again: lookup has something to copy."""
    ids = prompt(tokenizer, text)
    greedy, _ = generate(model, ids, mode="ar", max_new_tokens=12)
    return torch.cat([ids, torch.tensor([greedy]), ids], dim=1)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("drafter", ["lookup", "hybrid"])
def test_verify_with_lookup_drafts_is_ar_greedy(models, name, drafter, monkeypatch):
    """Across Gemma 3's sliding window and with rollbacks of up to 10 drafts: the model's own greedy output."""
    from tjdkit.decoding import verify as verify_module

    monkeypatch.setattr(verify_module, "MAX_ALTERNATIVES", 0)  # the copy against the head's one path (trees: test_tree)
    model, tokenizer = models[name]
    ids = repeating_prompt(model, tokenizer)
    reference, _ = generate(model, ids, mode="ar", max_new_tokens=N)
    head = weak_head(model, horizon=4) if drafter == "hybrid" else None
    tokens, stats = generate(model, ids, mode="verify", head=head, max_new_tokens=N, drafter=drafter)
    assert tokens == reference
    assert stats.forwards == 1 + len(stats.accepted) and stats.new_tokens == 1 + sum(a + 1 for a in stats.accepted)
    assert stats.lookup_steps >= 1 and max(stats.accepted) >= 2  # lookup drafted, and its copies were accepted
    if drafter == "lookup":
        assert stats.lookup_steps == sum(o > 0 for o in stats.offered)
    else:
        assert stats.lookup_steps < len(stats.accepted)  # the head drafted the other steps


def test_verify_sampling_with_lookup_drafts_follows_the_models_distribution(models):
    """Lookup drafts are a point mass q: accepted with probability p(draft), else resampled without
    them; chi-square of 4-token sequences against the model's exact distribution."""
    model, tokenizer = models["tiny-llama"]
    n, top_k, temperature, samples = 4, 2, 0.7, 1500
    ids = repeating_prompt(model, tokenizer, "Once upon a time")
    with torch.no_grad():
        exact = exact_distribution(model, ids, n, top_k, temperature)
    counts = dict.fromkeys(exact, 0)
    generator = torch.Generator().manual_seed(0)
    accepted = rejected = 0
    for _ in range(samples):
        tokens, stats = generate(model, ids, mode="verify", max_new_tokens=n, temperature=temperature, top_k=top_k,
                                 generator=generator, drafter="lookup")
        counts[tuple(tokens)] += 1
        accepted += sum(stats.accepted)
        rejected += sum(o > a for o, a in zip(stats.offered, stats.accepted))
    assert accepted > 0.2 * samples and rejected > 0.2 * samples  # both paths of the rule ran often
    chi2 = sum((counts[s] - samples * p) ** 2 / (samples * p) for s, p in exact.items())
    assert chi2 < 37.7  # 15 degrees of freedom, p = 0.001


def test_an_unknown_drafter_or_no_head_is_refused(models):
    model, tokenizer = models["tiny-llama"]
    with pytest.raises(TjdkitError, match="unknown drafter"):
        generate(model, prompt(tokenizer), mode="verify", drafter="tree")
    with pytest.raises(TjdkitError, match="needs a head"):
        generate(model, prompt(tokenizer), mode="verify", drafter="hybrid")
