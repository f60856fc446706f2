"""tjdkit.TJD: a custom (non-transformers) backbone brought the TJD framework's way, checked
against naive references: greedy decoding by repeated full forwards, a loss summed window
by window, a no-cache forward for the recompute cache."""

import itertools

import pytest
import torch
import torch.nn as nn

from tjdkit.config import TrainRecipe
from tjdkit.decoding import generate
from tjdkit.errors import TjdkitError
from tjdkit.tjd import TJD, RecomputeCache, TransformersTJD


class TinyLM(nn.Module):
    """A plain causal LM: embedding, a GRU, one causally masked self-attention block, a final
    norm and lm_head. Causal, so right padding never changes a real position's state."""

    def __init__(self, vocab_size: int, hidden: int = 32, heads: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)

    def hidden(self, input_ids):  # [B, T] -> [B, T, D], what lm_head sees
        x, _ = self.gru(self.embed(input_ids))
        t = input_ids.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=input_ids.device), diagonal=1)
        attended, _ = self.attn(x, x, x, attn_mask=causal, need_weights=False)
        return self.norm(x + attended)

    def forward(self, input_ids):
        return self.lm_head(self.hidden(input_ids))


class TJDTiny(TJD):
    """The TJD framework's documented recipe for a custom model."""

    def __init__(self, vocab_size=512, n_embd=32, model_head="cp", rank=2, horizon=3, positivity_func="exp",
                 freeze_base_model=True, **options):
        super().__init__(n_embd=n_embd, vocab_size=vocab_size, rank=rank, horizon=horizon, model_head=model_head,
                         positivity_func=positivity_func, freeze_base_model=freeze_base_model,
                         model_kwargs={"vocab_size": vocab_size, "hidden": n_embd}, **options)

    def get_base_model(self, **model_kwargs):
        return TinyLM(**model_kwargs)

    def get_last_hidden_state(self, input_ids, attention_mask=None):
        return self.base_model.hidden(input_ids)


def build(seed=0, **kwargs):
    torch.manual_seed(seed)
    return TJDTiny(**kwargs).eval()


def plain_greedy(lm: TinyLM, ids, n, eos=()):
    """Greedy decoding the naive way: a full forward over the whole sequence per token."""
    out = []
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            token = int(lm(seq)[0, -1].argmax())
            out.append(token)
            if token in eos:
                break
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    return out


def prompts(vocab_size, count=4, length=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (1, length), generator=g) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer():
    from tjdkit.models.tiny import build_tokenizer

    return build_tokenizer()


# ---- construction -------------------------------------------------------------------------------


def test_constructor_follows_the_seed():
    tjd = build(model_head="mps", rank=2, horizon=4)
    assert isinstance(tjd.base_model, TinyLM)
    assert (tjd.head.name, tjd.head.rank, tjd.head.horizon, tjd.head.positivity) == ("mps", 2, 4, "exp")
    assert not any(p.requires_grad for p in tjd.base_model.parameters())  # freeze_base_model=True
    assert all(p.requires_grad for p in tjd.head.parameters())
    assert tjd.get_output_embeddings() is tjd.base_model.lm_head
    base = build(model_head="base", freeze_base_model=False)  # the seed's "base" head = tjdkit's stp
    assert (base.head.name, base.head.horizon) == ("stp", 1)
    assert all(p.requires_grad for p in base.base_model.parameters())
    with pytest.raises(TjdkitError, match="unknown head"):
        build(model_head="nope")
    # the state_dict holds the backbone once (the language_model view is not a submodule)
    keys = list(tjd.state_dict())
    assert all(key.startswith(("base_model.", "head.")) for key in keys)
    import tjdkit
    import tjdkit.models

    assert tjdkit.TJD is TJD and tjdkit.tjd.TJD is TJD


# ---- the recompute cache ----------------------------------------------------------------------------


def test_recompute_cache_matches_a_no_cache_forward_after_crop():
    tjd = build()
    lm = tjd.language_model
    cache = lm.new_cache()
    assert isinstance(cache, RecomputeCache) and cache.get_seq_length() == 0
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = lm.base_model(input_ids=ids[:, :5], cache=cache, use_cache=True).last_hidden_state
        b = lm.base_model(input_ids=ids[:, 5:9], cache=cache, use_cache=True).last_hidden_state
        cache.activate_past_recording()
        cache.crop(0)
        assert cache.get_seq_length() == 9
        cache.crop(-2)  # drop ids 7, 8 ...
        assert cache.get_seq_length() == 7
        c = lm.base_model(input_ids=ids[:, 9:12], cache=cache, use_cache=True).last_hidden_state  # ... feed 9..11
        full = tjd.base_model.hidden(ids)
        cropped = tjd.base_model.hidden(torch.cat([ids[:, :7], ids[:, 9:12]], dim=1))
    assert a.shape == (1, 5, 32) and b.shape == (1, 4, 32) and c.shape == (1, 3, 32)
    torch.testing.assert_close(torch.cat([a, b], dim=1), full[:, :9], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, cropped[:, 7:], rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 10
    with pytest.raises(ValueError):
        cache.crop(3)


def test_language_model_is_a_causal_lm_view_sharing_the_parameters():
    tjd = build()
    lm = tjd.language_model
    assert lm is tjd.language_model
    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = lm(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, output_hidden_states=True)
        logits = tjd.base_model(ids)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.hidden_states[-1], tjd.base_model.hidden(ids))
    expected = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 512), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert {id(p) for p in lm.parameters()} == {id(p) for p in tjd.base_model.parameters()}
    assert lm.config.get_text_config().vocab_size == 512 and lm.device == torch.device("cpu")


# ---- decoding: lossless against naive greedy --------------------------------------------------------


@pytest.mark.parametrize("head", ["cp", "mps", "multihead"])
def test_greedy_verify_and_ar_equal_plain_greedy(head):
    tjd = build(model_head=head, horizon=3)
    accepted = offered = 0
    for ids in prompts(512):
        reference = plain_greedy(tjd.base_model, ids, 20)
        ar, _ = generate(tjd.language_model, ids, mode="ar", max_new_tokens=20)
        verified, stats = generate(tjd.language_model, ids, mode="verify", head=tjd.head, max_new_tokens=20)
        assert ar == reference
        assert verified == reference
        assert tjd.generate(ids, max_new_tokens=20) == reference  # mode="verify" by default
        draft = tjd.generate(ids, max_new_tokens=20, mode="draft")
        assert len(draft) == 20 and all(0 <= t < 512 for t in draft)
        accepted, offered = accepted + sum(stats.accepted), offered + sum(stats.offered)
    assert offered > 0


def test_verify_accepts_drafts_and_stays_exact_with_eos():
    # A head copied from the model's own output layer (no noise) drafts the model's next-token
    # argmax at every position: the tiny model's repetitive greedy output accepts many drafts,
    # rejects others, so both crop(0) and crop(-k) run.
    tjd = build(model_head="cp", horizon=4)
    from tjdkit.heads import build_head

    tjd.head = build_head("cp", hidden_size=32, vocab_size=512, rank=2, horizon=4,
                          lm_head_weight=tjd.base_model.lm_head.weight.detach(), init_noise=0.0)
    accepted, offered = 0, 0
    for ids in prompts(512, count=6, seed=7):
        reference = plain_greedy(tjd.base_model, ids, 30)
        tokens, stats = tjd.generate(ids, max_new_tokens=30, return_stats=True)
        assert tokens == reference
        accepted, offered = accepted + sum(stats.accepted), offered + sum(stats.offered)
        eos = reference[7]
        with_eos = tjd.generate(ids, max_new_tokens=30, eos_token_ids=[eos])
        assert with_eos == plain_greedy(tjd.base_model, ids, 30, eos={eos})
    assert 0 < accepted < offered


def test_sampled_verify_runs_and_respects_the_length():
    tjd = build()
    g = torch.Generator().manual_seed(0)
    tokens = tjd.generate(prompts(512)[0], max_new_tokens=15, temperature=1.0, generator=g)
    assert len(tokens) == 15


def test_context_limit_of_a_custom_backbone():
    class Short(TJDTiny):
        max_position_embeddings = 10

    torch.manual_seed(0)
    tjd = Short().eval()
    assert len(tjd.generate(torch.zeros(1, 6, dtype=torch.long), max_new_tokens=50, mode="ar")) == 4


# ---- the loss --------------------------------------------------------------------------------------


def test_forward_loss_equals_a_window_by_window_sum_and_learns():
    torch.manual_seed(0)
    tjd = TJDTiny(vocab_size=7, n_embd=8, model_head="cp", rank=2, horizon=2)
    ids = torch.randint(0, 7, (3, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding: row 1 has 4 tokens
    out = tjd(ids, mask)
    # brute force: every window (b, t) whose 2 targets are real tokens, p by enumeration of all 7**2 pairs
    hidden = tjd.base_model.hidden(ids).detach()
    total, count = 0.0, 0
    lengths = mask.sum(1).tolist()
    with torch.no_grad():
        for b in range(3):
            for t in range(lengths[b] - 2):
                target = ids[b, t + 1 : t + 3].tolist()
                everything = torch.tensor(list(itertools.product(range(7), repeat=2)))
                log_p = tjd.head.log_prob(hidden[b, t].expand(49, -1), everything)
                assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-5)  # normalised
                total += -log_p[everything.tolist().index(target)].item()
                count += 1
    assert out.windows == count == 4 + 2 + 4
    assert out.loss.item() == pytest.approx(total / count / 2, rel=1e-5)

    frozen = {name: p.detach().clone() for name, p in tjd.base_model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in tjd.parameters() if p.requires_grad], lr=0.05)
    first = out.loss.item()
    for _ in range(10):
        loss = tjd(ids, mask).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert tjd(ids, mask).loss.item() < first - 0.1
    for name, p in tjd.base_model.named_parameters():  # frozen backbone: untouched
        assert torch.equal(p, frozen[name])


# ---- training, evaluation, bench through the rest of tjdkit -------------------------------------------


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_fit_then_evaluate_and_bench(tmp_path, tokenizer, mode):
    from tjdkit.bench import bench_prompts, run_bench
    from tjdkit.evaluation import evaluate
    from tjdkit.recipes import load_recipe

    recipe = load_recipe("tiny-stemp", TrainRecipe, [], {
        "backbone.mode": mode, "head.horizon": 3, "data.train_size": 16, "data.eval_size": 4,
        "train.max_steps": 3, "train.batch_size": 8, "train.eval_every": 3, "train.save_every": 3, "train.warmup_steps": 1,
    })
    tjd = build(vocab_size=len(tokenizer), n_embd=32)
    before = {name: p.detach().clone() for name, p in tjd.base_model.named_parameters()}
    result = tjd.fit(recipe, tmp_path / "run", tokenizer)
    assert result.steps == 3 and result.eval_nll is not None and result.eval_nll == result.eval_nll
    assert (tjd.head.name, tjd.head.horizon) == ("cp", 3)  # the recipe's head, loaded back from best/
    changed = any(not torch.equal(p, before[name]) for name, p in tjd.base_model.named_parameters())
    assert changed == (mode == "full")
    assert not any(p.requires_grad for p in tjd.base_model.parameters())  # freeze flags restored

    tjd.eval()
    lm = tjd.language_model
    report = evaluate(lm, tokenizer, tjd.head, dataset="stemp", limit=3, modes=("ar", "draft", "verify"),
                      max_new_tokens=12)
    modes = report["modes"]
    assert set(modes) == {"ar", "draft", "verify"} and report["nll"]["head"] > 0
    assert modes["verify"]["new_tokens"] == modes["ar"]["new_tokens"]
    assert modes["verify"]["accuracy"] == modes["ar"]["accuracy"]
    assert modes["verify"]["tau"] == pytest.approx(report["acceptance"]["tau"])  # verify took greedy's steps

    prompt_ids = bench_prompts(tokenizer, "stemp", "test", 2)
    bench = run_bench(lm, tokenizer, tjd.head, prompt_ids, modes=("ar", "draft", "verify"), max_new_tokens=10,
                      warmup_tokens=4)
    assert bench["outputs"]["verify"] == bench["outputs"]["ar"]
    assert bench["parity"]["verify"]["identical"]
    eos = {tokenizer.eos_token_id}
    for ids, tokens in zip(prompt_ids, bench["outputs"]["ar"]):
        assert tokens == plain_greedy(tjd.base_model, torch.tensor([ids]), 10, eos)
    assert bench["modes"]["verify"]["forwards"] > 0


# ---- a transformers backbone -------------------------------------------------------------------------


def test_transformers_tjd_verify_equals_plain_greedy():
    tjd, tokenizer = TransformersTJD.load("tiny-llama", model_head="cp", rank=2, horizon=3)
    model = tjd.language_model
    assert model is tjd.base_model and type(model).__name__ == "LlamaForCausalLM"
    assert TJD.from_model(model, horizon=2).head.horizon == 2
    ids = torch.tensor([tokenizer("The quick brown fox").input_ids])
    reference, seq = [], ids
    with torch.no_grad():
        for _ in range(16):
            token = int(model(input_ids=seq).logits[0, -1].argmax())
            reference.append(token)
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    assert tjd.generate(ids, max_new_tokens=16) == reference
    assert generate(model, ids, mode="verify", head=tjd.head, max_new_tokens=16)[0] == reference
    assert tjd(ids).loss.item() > 0


def test_fit_refuses_lora_up_front(tmp_path, tokenizer):
    from tjdkit.recipes import load_recipe

    recipe = load_recipe("tiny-stemp", TrainRecipe, [], {"backbone.mode": "lora"})
    with pytest.raises(TjdkitError, match="LoRA"):
        build(vocab_size=len(tokenizer)).fit(recipe, tmp_path / "run", tokenizer)
    assert not (tmp_path / "run").exists()


def test_a_subclass_must_bring_its_backbone():
    """get_base_model and get_last_hidden_state are the subclass's to write: without them there is no TJD."""
    class NoHiddenState(TJD):
        def get_base_model(self, **model_kwargs):
            return TinyLM(vocab_size=16, hidden=8)

    with pytest.raises(TypeError, match="get_last_hidden_state"):
        NoHiddenState(n_embd=8, vocab_size=16)
