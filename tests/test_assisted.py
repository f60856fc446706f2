"""A joint head inside transformers' own `model.generate` (tjdkit.attach_head), checked against
transformers' plain generate on the same model: greedy output identical, sampled output from the
model's own (exactly computed) distribution, and the model exactly as before after detach_head."""

from collections import Counter

import pytest
import torch
from transformers import GenerationMixin
from transformers.generation.streamers import BaseStreamer

import tjdkit
from tjdkit.decoding import DecodeStats, generate
from tjdkit.errors import TjdkitError
from tjdkit.heads import build_head
from tjdkit.models import load_model

MODELS = ["tiny-llama", "tiny-gemma3", "tiny-gpt2"]
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Hello! How are you today?", "Question: what is"]


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in MODELS}


def ids_of(tokenizer, text):
    return torch.tensor([tokenizer(text).input_ids])  # [1, T]


def noisy_head(model, horizon=3, seed=1, noise=0.5, draft_vocab=None):
    """A CP head started from the model's lm_head with noisy projections: it agrees with the model sometimes."""
    config = model.config.get_text_config()
    torch.manual_seed(seed)
    return build_head("cp", hidden_size=config.hidden_size, vocab_size=config.vocab_size, rank=2, horizon=horizon,
                      lm_head_weight=model.get_output_embeddings().weight.detach(), init_noise=noise,
                      draft_vocab=draft_vocab).eval()


class PerfectDrafter:
    """A drafter rigged to the model's own greedy chain: it finds the position whose hidden state it
    was given (nearest row of a no-cache forward over prompt + greedy continuation) and drafts the
    tokens that follow there. Greedy only (no conditionals)."""

    def __init__(self, model, sequence, horizon):
        self.sequence, self.horizon = sequence[0].tolist(), horizon
        config = model.config.get_text_config()
        self.hidden_size, self.vocab_size = config.hidden_size, config.vocab_size
        with torch.no_grad():
            self.rows = model.base_model(input_ids=sequence).last_hidden_state[0]  # [T, D]

    def in_vocab(self, tokens):
        return torch.ones_like(tokens, dtype=torch.bool)

    def draft(self, hidden, greedy=True, temperature=1.0, generator=None, first=None, conditionals=True):
        assert greedy, "the rigged drafter drafts greedily only"
        at = int((self.rows - hidden).norm(dim=-1).argmin())  # hidden predicted sequence[at + 1] == first
        assert first is None or self.sequence[at + 1] == int(first[0])
        tokens = self.sequence[at + 1 : at + 1 + self.horizon]
        tokens += [0] * (self.horizon - len(tokens))  # past the known chain: anything (verification rejects it)
        return torch.tensor([tokens]), None


def plain(model, ids, **kwargs):
    return model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **kwargs)


class Counting:
    """Counts the backbone's forwards, whoever makes them."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.base_model.register_forward_pre_hook(self.hook)

    def hook(self, *_):
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


# ---- greedy: identical to plain generate --------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("horizon", [2, 4])
def test_greedy_generate_with_a_head_equals_plain_generate(models, name, horizon):
    model, tokenizer = models[name]
    head = noisy_head(model, horizon)
    for text in PROMPTS:
        ids = ids_of(tokenizer, text)
        for n in (1, 2, 5, 37):  # 37 tokens cross Gemma 3's 32-token sliding window
            reference = plain(model, ids, do_sample=False, max_new_tokens=n)
            attached = tjdkit.attach_head(model, head)
            try:
                ours = plain(model, ids, do_sample=False, max_new_tokens=n)
            finally:
                tjdkit.detach_head(model)
            assert torch.equal(ours, reference), (name, horizon, text, n)
            stats = attached.stats
            assert stats.new_tokens == n and stats.forwards == 1 + stats.steps
            assert all(0 <= a <= o <= horizon - 1 for a, o in zip(stats.accepted, stats.offered))


@pytest.mark.parametrize("name", MODELS)
def test_greedy_stops_at_eos_as_plain_generate_does(models, name):
    model, tokenizer = models[name]
    ids = ids_of(tokenizer, PROMPTS[0])
    chain = plain(model, ids, do_sample=False, max_new_tokens=30)[0, ids.shape[1] :].tolist()
    eos = chain[7]  # a token the model really produces: generation must stop at its first occurrence
    stop = chain.index(eos)
    reference = plain(model, ids, do_sample=False, max_new_tokens=30, eos_token_id=eos)
    assert reference.shape[1] == ids.shape[1] + stop + 1
    for head in (noisy_head(model, 4), PerfectDrafter(model, plain(model, ids, do_sample=False, max_new_tokens=30), 4)):
        tjdkit.attach_head(model, head)  # the rigged drafter drafts the eos itself
        try:
            ours = plain(model, ids, do_sample=False, max_new_tokens=30, eos_token_id=eos)
        finally:
            tjdkit.detach_head(model)
        assert torch.equal(ours, reference)


def test_same_drafts_and_acceptance_as_tjdkit_verify(models, monkeypatch):
    """transformers' loop with the head verifies exactly what tjdkit's own verify loop does with drafter=head
    and one draft path a step (transformers verifies a chain, not a tree)."""
    from tjdkit.decoding import verify as verify_module

    monkeypatch.setattr(verify_module, "MAX_ALTERNATIVES", 0)
    model, tokenizer = models["tiny-gemma3"]
    head = noisy_head(model, 4)
    ids = ids_of(tokenizer, PROMPTS[0])
    tokens, ours = generate(model, ids, mode="verify", head=head, drafter="head", max_new_tokens=40)
    attached = tjdkit.attach_head(model, head)
    try:
        out = plain(model, ids, do_sample=False, max_new_tokens=40)
    finally:
        tjdkit.detach_head(model)
    assert out[0, ids.shape[1] :].tolist() == tokens
    assert attached.stats.accepted == ours.accepted and attached.stats.forwards == ours.forwards


def test_a_perfect_drafter_gives_h_tokens_per_forward(models):
    model, tokenizer = models["tiny-llama"]
    ids = ids_of(tokenizer, PROMPTS[0])
    reference = plain(model, ids, do_sample=False, max_new_tokens=41)
    attached = tjdkit.attach_head(model, PerfectDrafter(model, reference, horizon=4))
    try:
        with Counting(model) as forwards:
            ours = plain(model, ids, do_sample=False, max_new_tokens=41)
    finally:
        tjdkit.detach_head(model)
    assert torch.equal(ours, reference)
    stats = attached.stats
    # the prefill gives 1 token, then every forward accepts all 3 drafts and adds its own: 1 + 10 * 4 = 41
    assert stats.accepted == [3] * 10 and stats.offered == [3] * 10
    assert stats.forwards == forwards.count == 11 and stats.tau == 4.0 and stats.seconds > 0
    assert attached.total.forwards == 11


# ---- attach / detach ----------------------------------------------------------------------


def test_detach_restores_the_model_exactly(models):
    model, tokenizer = models["tiny-llama"]
    ids = ids_of(tokenizer, PROMPTS[1])
    before = dict(vars(model))
    reference = plain(model, ids, do_sample=False, max_new_tokens=12)
    first = tjdkit.attach_head(model, noisy_head(model, 3))
    assert model.tjdkit_assisted is first and "generate" in vars(model)
    perfect = PerfectDrafter(model, reference, horizon=3)
    second = tjdkit.attach_head(model, perfect)  # attaching again replaces the head
    assert model.tjdkit_assisted is second and second.head is perfect
    assert torch.equal(plain(model, ids, do_sample=False, max_new_tokens=12), reference)
    assert second.stats.accepted and all(a == 2 for a in second.stats.accepted[:-1]) and not first.stats.forwards
    tjdkit.detach_head(model)
    assert vars(model).keys() == before.keys() and all(vars(model)[key] is before[key] for key in before)
    assert model.generate.__func__ is GenerationMixin.generate and not hasattr(model, "tjdkit_assisted")
    assert not model.base_model._forward_hooks and "_get_candidate_generator" not in vars(model)
    assert torch.equal(plain(model, ids, do_sample=False, max_new_tokens=12), reference)
    with pytest.raises(TjdkitError, match="no head is attached") as error:
        tjdkit.detach_head(model)
    assert "\n" not in str(error.value)


def test_attach_refuses_what_it_cannot_use(models):
    model, _ = models["tiny-llama"]
    config = model.config.get_text_config()
    with pytest.raises(TjdkitError, match="hidden_size"):
        tjdkit.attach_head(model, build_head("cp", hidden_size=config.hidden_size + 1, vocab_size=config.vocab_size,
                                             rank=1, horizon=2))
    with pytest.raises(TjdkitError, match="not a joint head"):
        tjdkit.attach_head(model, object())
    with pytest.raises(TjdkitError, match="not a transformers model"):
        tjdkit.attach_head(torch.nn.Linear(2, 2), noisy_head(model))
    assert "generate" not in vars(model) and not hasattr(model, "tjdkit_assisted")


def test_what_assisted_decoding_cannot_do_runs_as_plain_generate(models):
    """Batches, beams and the user's own prompt lookup: generate behaves as without the head; a streamer
    still receives every token."""
    model, tokenizer = models["tiny-gpt2"]
    ids = ids_of(tokenizer, PROMPTS[0])
    batch = ids.repeat(2, 1)
    expected = {
        "batch": plain(model, batch, do_sample=False, max_new_tokens=6),
        "beams": plain(model, ids, do_sample=False, num_beams=2, max_new_tokens=6),
        "lookup": plain(model, ids, do_sample=False, prompt_lookup_num_tokens=3, max_new_tokens=6),
    }

    class Collect(BaseStreamer):
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.reshape(-1).tolist())

        def end(self):
            pass

    attached = tjdkit.attach_head(model, noisy_head(model, 3))
    try:
        assert torch.equal(plain(model, batch, do_sample=False, max_new_tokens=6), expected["batch"])
        assert torch.equal(plain(model, ids, do_sample=False, num_beams=2, max_new_tokens=6), expected["beams"])
        lookup = plain(model, ids, do_sample=False, prompt_lookup_num_tokens=3, max_new_tokens=6)
        assert torch.equal(lookup, expected["lookup"]) and not attached.stats.forwards  # the head never drafted
        streamer = Collect()
        out = plain(model, ids, do_sample=False, max_new_tokens=20, streamer=streamer)
        assert [token for chunk in streamer.chunks for token in chunk] == out[0].tolist() and attached.stats.forwards > 0
    finally:
        tjdkit.detach_head(model)


# ---- sampling: the model's own distribution -----------------------------------------------


def test_sampling_gives_tokens_the_model_can_sample_and_follows_the_seed(models):
    model, tokenizer = models["tiny-gemma3"]
    ids = ids_of(tokenizer, PROMPTS[0])
    attached = tjdkit.attach_head(model, noisy_head(model, 4, noise=0.1))
    try:
        runs = []
        for _ in range(2):
            torch.manual_seed(7)
            runs.append(plain(model, ids, do_sample=True, top_k=4, temperature=0.8, max_new_tokens=40))
    finally:
        tjdkit.detach_head(model)
    assert torch.equal(runs[0], runs[1])  # the same seed, the same tokens
    out = runs[0]
    assert out.shape[1] == ids.shape[1] + 40
    with torch.no_grad():
        logits = model(out).logits[0]  # [T, V], no cache: an independent forward
    allowed = logits.topk(4, dim=-1).indices  # top_k=4: only these can be sampled
    for position in range(ids.shape[1], out.shape[1]):
        assert int(out[0, position]) in allowed[position - 1].tolist()
    assert attached.stats.new_tokens == 40 and sum(attached.stats.accepted) > 0  # drafts were accepted


class SharpDrafter:
    """A drafter whose q differs from p but overlaps it: for t2 after t1, q is the model's own top-k
    conditional sharpened (q ~ p^3), so q > p on the mode and q < p elsewhere; the draft is sampled
    from q with the global generator, as a head samples. A q handed over wrongly would bias the output."""

    horizon = 2

    def __init__(self, conditionals, vocab_size):
        self.conditionals, self.vocab_size = conditionals, vocab_size  # t1 -> {t2: p(t2 | t1)}

    def in_vocab(self, tokens):
        return torch.ones_like(tokens, dtype=torch.bool)

    def draft(self, hidden, greedy=True, temperature=1.0, generator=None, first=None, conditionals=True):
        t1 = int(first[0])
        q = torch.zeros(1, 2, self.vocab_size)
        q[0, 0, t1] = 1.0
        for t2, p in self.conditionals[t1].items():
            q[0, 1, t2] = p**3
        q[0, 1] /= q[0, 1].sum()
        t2 = int(torch.multinomial(q[0, 1], 1, generator=generator))
        return torch.tensor([[t1, t2]]), q


def test_sampled_pairs_follow_the_models_distribution(models):
    """The first two tokens with top_k=3: the first from the prefill, the second through speculative
    sampling (the draft accepted with min(1, p/q), else the residual resampled; a third token leaves
    room for one draft). Their joint frequencies over many seeded runs match the model's exact
    p(t1) p(t2 | t1), computed by independent forwards."""
    model, tokenizer = models["tiny-llama"]
    ids = ids_of(tokenizer, PROMPTS[2])
    k, temperature, runs = 3, 0.1, 800  # a peaked p: q ~ p^3 then differs from it

    def top_k_probs(sequence):
        with torch.no_grad():
            logits = model(sequence).logits[0, -1] / temperature  # [V]
        values, tokens = logits.topk(k)
        return dict(zip(tokens.tolist(), torch.softmax(values, dim=-1).tolist()))

    firsts = top_k_probs(ids)
    seconds = {t1: top_k_probs(torch.cat([ids, torch.tensor([[t1]])], dim=1)) for t1 in firsts}
    exact = {(t1, t2): p1 * p2 for t1, p1 in firsts.items() for t2, p2 in seconds[t1].items()}
    attached = tjdkit.attach_head(model, SharpDrafter(seconds, model.config.vocab_size))
    torch.manual_seed(0)
    seen, accepted = Counter(), 0
    try:
        for _ in range(runs):
            out = plain(model, ids, do_sample=True, top_k=k, temperature=temperature, max_new_tokens=3)
            seen[tuple(out[0, ids.shape[1] : ids.shape[1] + 2].tolist())] += 1
            assert attached.stats.offered[0] == 1
            accepted += attached.stats.accepted[0]  # the step after t1: its one draft accepted as t2, or not
    finally:
        tjdkit.detach_head(model)
    assert 0.1 * runs < accepted < 0.95 * runs  # both paths ran often: accepted drafts and resampled residuals
    assert set(seen) <= set(exact)
    # Pearson's chi-square over the 9 pairs (8 degrees of freedom): 26.12 is its 99.9% quantile. Handing
    # transformers q^2 instead of q (a bias of about 0.08 on the mode) scored 30 here.
    chi_square = sum((seen[pair] - runs * p) ** 2 / (runs * p) for pair, p in exact.items())
    assert chi_square < 26.12, (chi_square, {pair: (seen[pair] / runs, p) for pair, p in exact.items()})


def test_a_joint_head_samples_with_its_own_conditionals(models):
    """A real CP head's sampled drafts (q over a small draft vocabulary) pass through the same rule: the
    output stays inside the model's top-k, and some drafts are accepted."""
    model, tokenizer = models["tiny-llama"]
    ids = ids_of(tokenizer, PROMPTS[2])
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    support = logits.topk(16).indices.tolist()
    attached = tjdkit.attach_head(model, noisy_head(model, 3, noise=0.3, draft_vocab=support))
    torch.manual_seed(1)
    try:
        out = plain(model, ids, do_sample=True, top_k=2, max_new_tokens=30)
    finally:
        tjdkit.detach_head(model)
    with torch.no_grad():
        allowed = model(out).logits[0].topk(2, dim=-1).indices  # [T, 2]
    assert all(int(out[0, i]) in allowed[i - 1].tolist() for i in range(ids.shape[1], out.shape[1]))
    assert attached.stats.new_tokens == 30 and attached.stats.steps > 0


# ---- bench --------------------------------------------------------------------------------


def test_bench_times_the_assisted_mode_with_parity(models):
    from tjdkit.bench import DEFAULT_MODES, LOSSLESS, NEEDS_HEAD, run_bench
    from tjdkit.ui.bench import bench_table

    model, tokenizer = models["tiny-llama"]
    assert "assisted" not in DEFAULT_MODES and "assisted" in LOSSLESS and "assisted" in NEEDS_HEAD
    prompts = [tokenizer(text).input_ids for text in PROMPTS[:2]]
    head = noisy_head(model, 3)
    result = run_bench(model, tokenizer, head, prompts, modes=("ar", "assisted", "verify"), max_new_tokens=12,
                       warmup_tokens=4)
    assert result["parity"]["assisted"]["identical"] and result["parity"]["assisted"]["lossless"]
    assert result["outputs"]["assisted"] == result["outputs"]["ar"]
    row = result["modes"]["assisted"]
    assert row["new_tokens"] == 24 and row["tau"] >= 1.0 and row["drafts_per_step"] == 2
    assert row["forwards"] < 24 or row["tau"] == 1.0  # forwards counted on the model: fewer than tokens when drafts hold
    assert len(row["acceptance_by_position"]) == 2 and "lookup_share" not in row
    assert "generate" not in vars(model) and not hasattr(model, "tjdkit_assisted")  # detached after every run
    with pytest.raises(TjdkitError, match="assisted need a head"):
        run_bench(model, tokenizer, None, prompts, modes=("ar", "assisted"), max_new_tokens=4)
    table = bench_table(result, "bench")
    assert table.row_count == 3


def test_decode_stats_of_an_attachment_sum_calls(models):
    model, tokenizer = models["tiny-gpt2"]
    attached = tjdkit.attach_head(model, noisy_head(model, 3))
    try:
        for text in PROMPTS[:2]:
            plain(model, ids_of(tokenizer, text), do_sample=False, max_new_tokens=8)
    finally:
        tjdkit.detach_head(model)
    assert isinstance(attached.total, DecodeStats) and attached.total.new_tokens == 16
    assert attached.stats.new_tokens == 8 and attached.total.forwards >= attached.stats.forwards
