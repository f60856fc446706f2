"""Joint heads checked against independent truth: brute-force enumeration of all V**H
sequences, naive probability-space contractions, and the base model's own lm_head."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from tjdkit.errors import TjdkitError
from tjdkit.heads import HEADS, POSITIVITY, JointHead, build_head

NAMES = ["stp", "multihead", "cp", "mps"]
DRAFT_IDS = [4, 1, 5, 2]  # a draft vocabulary of K=4 out of V=6, deliberately unsorted


def make(name, *, V=5, H=2, R=3, D=4, dtype=torch.float64, seed=0, scale=1.0, **options):
    """A head with every parameter randomised (so zero-initialised weights matter too)."""
    torch.manual_seed(seed)
    head = build_head(name, hidden_size=D, vocab_size=V, rank=R, horizon=H, **options)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * scale)
    return head.to(dtype)


def all_sequences(V, H):
    return torch.tensor(list(itertools.product(range(V), repeat=H)), dtype=torch.long)  # [V**H, H]


def brute_joint(head, hidden):
    """exp(log_prob) of every sequence: [B, V, ..., V] (H axes), by enumeration."""
    B, V, H = hidden.shape[0], head.vocab_size, head.horizon
    seqs = all_sequences(V, H)
    lp = head.log_prob(hidden[:, None].expand(B, len(seqs), -1), seqs[None].expand(B, -1, -1))
    return lp.exp().detach().view(B, *([V] * H))


def brute_conditional(joint_b, prefix):
    """p(y_h | y_<h = prefix) from one sequence's joint [V]*H, by summing out the future."""
    rest = joint_b[tuple(prefix)]  # [V]*(H-h)
    marg = rest.reshape(rest.shape[0], -1).sum(-1) if rest.dim() > 1 else rest
    return marg / marg.sum()


def grid(Hs, Rs):
    return [
        (name, pos, H, R)
        for name in NAMES
        for pos in POSITIVITY
        for H in Hs
        for R in Rs
        if name != "stp" or H == 1
    ]


# ---- exact normalisation -------------------------------------------------------------


@pytest.mark.parametrize("name,positivity,H,R", grid([1, 2, 3], [1, 3]))
def test_sums_to_one_over_all_sequences(name, positivity, H, R):
    head = make(name, H=H, R=R, positivity=positivity)
    hidden = torch.randn(3, 4, dtype=torch.float64) * 2
    total = brute_joint(head, hidden).reshape(3, -1).sum(-1)
    torch.testing.assert_close(total, torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("positivity", ["none", "relu"])
def test_sums_to_one_float32(name, positivity):
    head = make(name, H=1 if name == "stp" else 3, positivity=positivity, dtype=torch.float32)
    hidden = torch.randn(2, 4)
    total = brute_joint(head, hidden).reshape(2, -1).sum(-1)
    torch.testing.assert_close(total, torch.ones(2), atol=1e-4, rtol=0)


def _naive_cp(head, hidden):
    """Probability-space CP: sum_r w_r prod_h f_{r,h}(y_h) over the full grid, divided by its sum."""
    B, R, H = hidden.shape[0], head.rank, head.horizon
    w = torch.softmax(head.mix(hidden), -1)  # [B, R]
    log_f, _ = head._factors(hidden)
    f = log_f.exp().view(B, R, H, -1)  # unnormalised factors
    letters = "xyzuvw"[:H]
    terms = ",".join(f"br{c}" for c in letters)
    joint = torch.einsum(f"br,{terms}->b{letters}", w, *[f[:, :, h] for h in range(H)])
    return joint / joint.reshape(B, -1).sum(-1).view(B, *[1] * H)


def _naive_mps(head, hidden):
    """Probability-space MPS: alpha^T G_1(y_1) ... G_H(y_H) 1 by explicit matrix products."""
    B, R, H, V = hidden.shape[0], head.rank, head.horizon, head.vocab_size
    alpha = torch.softmax(head.alpha(hidden), -1)  # [B, R]
    A = torch.softmax(head.trans(hidden).view(B, H - 1, R, R), -1)
    f = head._factors(hidden)[0].exp().view(B, H, R, V)
    joint = torch.zeros(B, *[V] * H, dtype=hidden.dtype)
    for ys in itertools.product(range(V), repeat=H):
        vec = alpha * f[:, 0, :, ys[0]]  # [B, R]
        for h in range(1, H):
            vec = torch.einsum("bi,bij->bj", vec, A[:, h - 1] * f[:, h, None, :, ys[h]])
        joint[(slice(None), *ys)] = vec.sum(-1)
    return joint / joint.reshape(B, -1).sum(-1).view(B, *[1] * H)


@pytest.mark.parametrize("name,naive", [("cp", _naive_cp), ("mps", _naive_mps)])
@pytest.mark.parametrize("positivity", ["none", "exp", "safe_exp", "relu"])
def test_log_prob_matches_naive_contraction(name, naive, positivity):
    head = make(name, H=3, R=3, positivity=positivity)
    hidden = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(brute_joint(head, hidden), naive(head, hidden), atol=1e-10, rtol=1e-8)


def test_multihead_is_product_of_marginals():
    head = make("multihead", H=3)
    hidden = torch.randn(2, 4, dtype=torch.float64)
    joint = brute_joint(head, hidden)
    m = [joint.sum(dim=tuple(d for d in (1, 2, 3) if d != h + 1)) for h in range(3)]
    torch.testing.assert_close(joint, torch.einsum("bx,by,bz->bxyz", *m))


def test_log_prob_accepts_leading_dims():
    head = make("cp", H=2)
    hidden = torch.randn(2, 3, 4, dtype=torch.float64)
    targets = torch.randint(0, 5, (2, 3, 2))
    out = head.log_prob(hidden, targets)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.reshape(-1), head.log_prob(hidden.reshape(6, 4), targets.reshape(6, 2)))


# ---- draft: the conditionals used are the head's true conditionals ---------------------


@pytest.mark.parametrize("draft_vocab", [None, DRAFT_IDS], ids=["full", "subset"])
@pytest.mark.parametrize("positivity", POSITIVITY)
@pytest.mark.parametrize("name", NAMES)
def test_greedy_draft_matches_brute_force_conditionals(name, positivity, draft_vocab):
    H = 1 if name == "stp" else 3
    head = make(name, V=6, H=H, positivity=positivity, draft_vocab=draft_vocab and torch.tensor(draft_vocab))
    hidden = torch.randn(3, 4, dtype=torch.float64)
    joint = brute_joint(head, hidden)
    tokens, q = head.draft(hidden, greedy=True)
    assert tokens.shape == (3, H) and tokens.dtype == torch.long and q.shape == (3, H, 6)
    for b in range(3):
        for h in range(H):
            cond = brute_conditional(joint[b], tokens[b, :h].tolist())
            torch.testing.assert_close(q[b, h], cond, atol=1e-9, rtol=1e-7)
            assert int(tokens[b, h]) == int(cond.argmax())


@pytest.mark.parametrize("draft_vocab", [None, DRAFT_IDS], ids=["full", "subset"])
@pytest.mark.parametrize("name", ["multihead", "cp", "mps"])
def test_draft_with_a_given_first_token_conditions_on_it(name, draft_vocab):
    """first=y1: positions 2..H are the brute-force conditionals given y1 (what verify drafts from)."""
    head = make(name, V=6, H=3, draft_vocab=draft_vocab and torch.tensor(draft_vocab))
    hidden = torch.randn(3, 4, dtype=torch.float64)
    joint = brute_joint(head, hidden)
    allowed = draft_vocab or list(range(6))
    first = torch.tensor([allowed[0], allowed[-1], allowed[1]])
    tokens, q = head.draft(hidden, greedy=True, first=first)
    assert torch.equal(tokens[:, 0], first)
    for b in range(3):
        for h in range(1, 3):
            cond = brute_conditional(joint[b], tokens[b, :h].tolist())
            torch.testing.assert_close(q[b, h], cond, atol=1e-9, rtol=1e-7)
            assert int(tokens[b, h]) == int(cond.argmax())
    same, none = head.draft(hidden, greedy=True, first=first, conditionals=False)
    assert torch.equal(same, tokens) and none is None
    if draft_vocab:
        outside = next(t for t in range(6) if t not in draft_vocab)
        with pytest.raises(TjdkitError, match="outside the head's vocabulary"):
            head.draft(hidden[:1], first=torch.tensor([outside]))
    with pytest.raises(TjdkitError, match="first must be"):
        head.draft(hidden, first=torch.tensor([1]))

    # first=[y1, y2] (a token tree's branch from the head's next-best y2): position 3 given both
    prefix = torch.stack([first, first.flip(0)], dim=1)  # [3, 2]
    tokens, q = head.draft(hidden, greedy=True, first=prefix)
    assert torch.equal(tokens[:, :2], prefix)
    for b in range(3):
        cond = brute_conditional(joint[b], prefix[b].tolist())
        torch.testing.assert_close(q[b, 2], cond, atol=1e-9, rtol=1e-7)
        assert int(tokens[b, 2]) == int(cond.argmax())
    with pytest.raises(TjdkitError, match="first must be"):
        head.draft(hidden, first=torch.zeros(3, 4, dtype=torch.long))  # longer than the horizon


@pytest.mark.parametrize("draft_vocab", [None, DRAFT_IDS], ids=["full", "subset"])
@pytest.mark.parametrize("name", ["multihead", "cp", "mps"])
def test_next_best_tokens_are_the_top_of_the_brute_force_conditionals(name, draft_vocab):
    """draft_next_best: the greedy draft, and per position the k most likely tokens of its conditional (global
    ids, found over the draft vocabulary): the candidates a token tree branches on."""
    head = make(name, V=6, H=3, draft_vocab=draft_vocab and torch.tensor(draft_vocab))
    hidden = torch.randn(3, 4, dtype=torch.float64)
    joint = brute_joint(head, hidden)
    first = torch.tensor((draft_vocab or list(range(6)))[:3])
    tokens, ids, probs = head.draft_next_best(hidden, first, k=3)
    assert torch.equal(tokens, head.draft(hidden, greedy=True, first=first, conditionals=False)[0])
    assert ids.shape == probs.shape == (3, 3, 3)
    for b in range(3):
        for h in range(1, 3):
            cond = brute_conditional(joint[b], tokens[b, :h].tolist())
            top = cond.topk(3)
            torch.testing.assert_close(probs[b, h], top.values, atol=1e-9, rtol=1e-7)
            assert torch.equal(cond[ids[b, h]], top.values) and int(ids[b, h, 0]) == int(tokens[b, h])
    assert head.draft_next_best(hidden, first, k=99)[1].shape[-1] == len(draft_vocab or range(6))


@pytest.mark.parametrize("name", ["multihead", "cp", "mps"])
def test_one_state_under_several_prefixes_runs_the_decoder_once(name, monkeypatch):
    """A token tree drafts several branches from one hidden state (hidden.expand): what depends on the state
    alone is computed for one row, and the drafts equal those from separate copies of the state."""
    head = make(name, V=6, H=3)
    state = torch.randn(1, 4, dtype=torch.float64)
    prefixes = torch.tensor([[1, 2], [1, 4], [3, 0]])
    separate, _ = head.draft(state.repeat(3, 1), first=prefixes, conditionals=False)
    rows = []
    decoder = head._factors
    monkeypatch.setattr(head, "_factors", lambda hidden: rows.append(hidden.shape[0]) or decoder(hidden))
    shared, _ = head.draft(state.expand(3, -1), first=prefixes, conditionals=False)
    assert torch.equal(shared, separate) and rows[-1] == 1


@pytest.mark.parametrize("name", ["multihead", "cp", "mps"])
def test_sampled_draft_is_reproducible_and_follows_the_joint(name):
    head = make(name, H=2, R=3, dtype=torch.float32, positivity="exp")
    hidden = torch.randn(1, 4) * 2
    joint = brute_joint(head, hidden)[0].double()  # [V, V]
    N = 4000
    many = hidden.expand(N, 4)
    t1, q1 = head.draft(many, greedy=False, generator=torch.Generator().manual_seed(7))
    t2, q2 = head.draft(many, greedy=False, generator=torch.Generator().manual_seed(7))
    assert torch.equal(t1, t2) and torch.equal(q1, q2)
    torch.testing.assert_close(q1.sum(-1), torch.ones(N, 2))
    # First token: q is the marginal, and the samples follow it.
    marginal = joint.sum(-1)
    torch.testing.assert_close(q1[0, 0].double(), marginal, atol=1e-5, rtol=1e-4)
    freq = torch.bincount(t1[:, 0], minlength=5).double() / N
    assert (freq - marginal).abs().max() < 0.05
    # Second token: q is the conditional given the sampled first token.
    for n in range(5):
        cond = joint[t1[n, 0]] / joint[t1[n, 0]].sum()
        torch.testing.assert_close(q1[n, 1].double(), cond, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["cp", "mps"])
def test_temperature_tempers_the_conditionals(name):
    head = make(name, H=2)
    hidden = torch.randn(4, 4, dtype=torch.float64)
    joint = brute_joint(head, hidden)
    T = 0.5
    tokens, q = head.draft(hidden, greedy=False, temperature=T, generator=torch.Generator().manual_seed(0))
    for b in range(4):
        for h in range(2):
            cond = brute_conditional(joint[b], tokens[b, :h].tolist())
            tempered = cond ** (1 / T) / (cond ** (1 / T)).sum()
            torch.testing.assert_close(q[b, h], tempered, atol=1e-9, rtol=1e-7)


# ---- numerical stability -------------------------------------------------------------

STRESS_MODES = {
    "f32": (torch.float32, torch.float32),
    "f32-head-bf16-hidden": (torch.float32, torch.bfloat16),
    "bf16": (torch.bfloat16, torch.bfloat16),
}


@pytest.mark.parametrize("mode", STRESS_MODES)
@pytest.mark.parametrize("name", NAMES)
def test_no_nan_or_inf_at_rank_64_horizon_8(name, mode):
    head_dtype, hidden_dtype = STRESS_MODES[mode]
    H = 1 if name == "stp" else 8
    V = 1000
    torch.manual_seed(0)
    head = build_head(name, hidden_size=16, vocab_size=V, rank=64, horizon=H)
    with torch.no_grad():  # large mixture / transition logits too
        for p in head.parameters():
            p.add_(torch.randn_like(p))
    hidden = (torch.randn(2, 16) * 100).to(hidden_dtype)
    targets = torch.randint(0, V, (2, H))
    for positivity in POSITIVITY:
        head.positivity = positivity
        h = head.to(head_dtype)
        lp = h.log_prob(hidden, targets)
        assert lp.dtype == torch.float32
        assert torch.isfinite(lp).all(), (positivity, lp)
        assert (lp <= 1e-3).all()
        tokens, q = h.draft(hidden, greedy=(positivity != "exp"), generator=torch.Generator().manual_seed(0))
        assert q.dtype == torch.float32 and torch.isfinite(q).all()
        torch.testing.assert_close(q.sum(-1), torch.ones(2, H), atol=1e-4, rtol=0)
        assert ((tokens >= 0) & (tokens < V)).all()


@pytest.mark.parametrize("name", ["multihead", "cp", "mps"])
def test_full_gemma_sized_vocab(name):
    V = 262144
    torch.manual_seed(0)
    head = build_head(name, hidden_size=8, vocab_size=V, rank=2, horizon=2)
    for dtype in (torch.float32, torch.bfloat16):
        hidden = (torch.randn(1, 8) * 30).to(dtype)
        lp = head.log_prob(hidden, torch.tensor([[V - 1, 12345]]))
        assert torch.isfinite(lp).all() and lp.item() < 0
        tokens, q = head.draft(hidden)
        assert q.shape == (1, 2, V) and torch.isfinite(q).all()
        torch.testing.assert_close(q.sum(-1), torch.ones(1, 2), atol=1e-4, rtol=0)
        # greedy tokens score at least as well as a random sequence
        assert head.log_prob(hidden, tokens).item() >= lp.item() - 1e-3


# ---- draft vocabulary ----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("positivity", ["none", "sigmoid"])
def test_draft_vocab_subset(name, positivity):
    H = 1 if name == "stp" else 2
    ids = torch.tensor(DRAFT_IDS)
    head = make(name, V=6, H=H, positivity=positivity, draft_vocab=ids)
    assert torch.equal(head.vocab_ids, ids) and head.decoder.out_features == 4
    hidden = torch.randn(3, 4, dtype=torch.float64)
    joint = brute_joint(head, hidden)  # over all 6**H sequences
    torch.testing.assert_close(joint.reshape(3, -1).sum(-1), torch.ones(3, dtype=torch.float64), atol=1e-10, rtol=0)
    seqs = all_sequences(6, H)
    inside = torch.isin(seqs, ids).all(-1)
    assert torch.equal(head.in_vocab(seqs), torch.isin(seqs, ids))
    lp = head.log_prob(hidden[:1].expand(len(seqs), -1), seqs)
    assert torch.isneginf(lp[~inside]).all() and torch.isfinite(lp[inside]).all()
    for greedy in (True, False):
        tokens, q = head.draft(hidden, greedy=greedy, generator=torch.Generator().manual_seed(1))
        assert torch.isin(tokens, ids).all()
        outside = torch.tensor([0, 3])
        assert (q[..., outside] == 0).all()
        torch.testing.assert_close(q.sum(-1), torch.ones(3, H, dtype=torch.float64))


def test_draft_vocab_int_then_set_vocab_ids():
    torch.manual_seed(0)
    V, D = 10, 6
    W = torch.randn(V, D)
    head = build_head("cp", hidden_size=D, vocab_size=V, rank=2, horizon=2, draft_vocab=3, lm_head_weight=W)
    assert torch.equal(head.vocab_ids, torch.arange(3))
    torch.testing.assert_close(head.decoder.weight, W[:3])
    frequent = torch.tensor([7, 0, 9])
    head.set_vocab_ids(frequent, lm_head_weight=W)
    torch.testing.assert_close(head.decoder.weight, W[frequent])
    assert torch.equal(head.in_vocab(torch.tensor([[7, 1], [9, 0]])), torch.tensor([[True, False], [True, True]]))
    tokens, q = head.draft(torch.randn(4, D))
    assert torch.isin(tokens, frequent).all()
    assert q[..., [1, 2, 3, 4, 5, 6, 8]].abs().sum() == 0
    with pytest.raises(TjdkitError, match="expected 3"):
        head.set_vocab_ids(torch.tensor([1, 2]))
    with pytest.raises(TjdkitError, match="needs a head built with draft_vocab"):
        build_head("cp", hidden_size=D, vocab_size=V, rank=2, horizon=2).set_vocab_ids([1])


def test_out_of_range_targets_are_minus_inf_not_errors():
    head = make("mps", H=2)
    hidden = torch.randn(2, 4, dtype=torch.float64)
    targets = torch.tensor([[-100, 1], [2, 5]])  # an ignore index and id == V
    assert torch.isneginf(head.log_prob(hidden, targets)).all()
    assert torch.equal(head.in_vocab(targets), torch.tensor([[False, True], [True, False]]))


# ---- initialisation from the base model ----------------------------------------------


def test_stp_starts_as_the_base_model():
    torch.manual_seed(0)
    V, D = 50, 32
    W = torch.randn(V, D) / D**0.5
    hidden = torch.randn(4, D) * 3
    base = torch.log_softmax(hidden @ W.T, -1)  # the base model's next-token log-probs
    all_tokens = torch.arange(V)

    def head_log_probs(head):
        return torch.stack([head.log_prob(hidden, torch.full((4, 1), v)) for v in all_tokens], -1).detach()

    exact = build_head("stp", hidden_size=D, vocab_size=V, lm_head_weight=W, init_noise=0.0)
    torch.testing.assert_close(head_log_probs(exact), base, atol=1e-5, rtol=0)
    near = build_head("stp", hidden_size=D, vocab_size=V, lm_head_weight=W)  # default small noise
    kl = (base.exp() * (base - head_log_probs(near))).sum(-1)  # KL(base || fresh head)
    assert kl.max() < 0.01, kl
    _, q = near.draft(hidden)
    assert (q[:, 0] - base.exp()).abs().max() < 0.05
    # draft vocabulary: the base distribution restricted to the subset, renormalised
    ids = torch.tensor([3, 17, 42, 8, 0])
    sub = build_head("stp", hidden_size=D, vocab_size=V, lm_head_weight=W, draft_vocab=ids, init_noise=0.0)
    _, q = sub.draft(hidden)
    expect = torch.softmax(base[:, ids], -1)
    torch.testing.assert_close(q[:, 0, ids], expect, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["cp", "mps"])
def test_fresh_joint_head_first_token_is_the_base_model(name):
    torch.manual_seed(0)
    V, D = 40, 16
    W = torch.randn(V, D) / D**0.5
    head = build_head(name, hidden_size=D, vocab_size=V, rank=4, horizon=3, lm_head_weight=W, init_noise=0.0)
    hidden = torch.randn(3, D)
    _, q = head.draft(hidden)
    torch.testing.assert_close(q, torch.softmax(hidden @ W.T, -1)[:, None].expand(3, 3, V), atol=1e-5, rtol=0)


# ---- config, state_dict, gradients -----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    H = 1 if name == "stp" else 3
    head = make(
        name, V=9, H=H, R=2, D=5, dtype=torch.float32, positivity="safe_exp",
        draft_vocab=torch.tensor([8, 2, 5, 0]), embedding_dim=3, freeze_decoder=True,
    )
    assert isinstance(head, JointHead) and isinstance(head, torch.nn.Module) and isinstance(head, HEADS[name])
    assert (head.name, head.hidden_size, head.vocab_size, head.rank, head.horizon) == (name, 5, 9, 2, H)
    cfg = json.loads(json.dumps(head.config()))
    clone = build_head(**cfg)
    assert clone.config() == head.config()
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in head.state_dict().items()}
    clone.load_state_dict(head.state_dict())
    assert torch.equal(clone.vocab_ids, head.vocab_ids)
    hidden = torch.randn(3, 5)
    targets = head.vocab_ids[torch.randint(0, 4, (3, H))]
    assert torch.equal(clone.log_prob(hidden, targets), head.log_prob(hidden, targets))
    assert torch.equal(clone.draft(hidden)[1], head.draft(hidden)[1])
    assert not clone.decoder.weight.requires_grad


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("positivity", POSITIVITY)
def test_gradients_flow(name, positivity):
    H = 1 if name == "stp" else 3
    head = make(name, V=7, H=H, R=3, dtype=torch.float32, positivity=positivity)
    hidden = torch.randn(4, 4, requires_grad=True)
    head.log_prob(hidden, torch.randint(0, 7, (4, H))).mean().backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() > 0


def test_frozen_decoder_gets_no_gradient():
    head = make("cp", H=2, dtype=torch.float32, freeze_decoder=True)
    head.log_prob(torch.randn(2, 4), torch.randint(0, 5, (2, 2))).mean().backward()
    assert head.decoder.weight.grad is None
    assert head.proj.grad is not None and head.mix.weight.grad is not None


# ---- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="tucker"), "unknown head 'tucker'"),
        (dict(name="cp", rank=0), "rank must be an integer >= 1"),
        (dict(name="mps", horizon=0), "horizon must be an integer >= 1"),
        (dict(name="stp", horizon=2), "horizon must be 1"),
        (dict(name="cp", positivity="softplus"), "unknown positivity 'softplus'"),
        (dict(name="cp", draft_vocab=11), "draft_vocab must be in 1..vocab_size=10"),
        (dict(name="cp", draft_vocab=torch.arange(11)), "more than vocab_size"),
        (dict(name="cp", draft_vocab=torch.tensor([1, 1])), "distinct"),
        (dict(name="cp", draft_vocab=torch.tensor([3, 10])), r"lie in 0..9"),
        (dict(name="cp", lm_head_weight=torch.zeros(10, 5)), "lm_head_weight must be"),
        (dict(name="cp", lm_head_weight=torch.zeros(10, 4), embedding_dim=3), "embedding_dim == hidden_size"),
        (dict(name="cp", ranks=2), "unknown option"),
    ],
)
def test_bad_arguments_raise_tjdkit_error(kwargs, match):
    args = dict(hidden_size=4, vocab_size=10, rank=2, horizon=2)
    args.update(kwargs)
    with pytest.raises(TjdkitError, match=match):
        build_head(**args)


def test_bad_call_shapes_raise_tjdkit_error():
    head = build_head("cp", hidden_size=4, vocab_size=10, rank=2, horizon=2)
    with pytest.raises(TjdkitError, match="hidden_size=4"):
        head.log_prob(torch.randn(2, 5), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TjdkitError, match="horizon=2"):
        head.log_prob(torch.randn(2, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TjdkitError, match="temperature"):
        head.draft(torch.randn(2, 4), greedy=False, temperature=0.0)


def test_heads_registry():
    assert set(HEADS) == set(NAMES)
    for name, cls in HEADS.items():
        assert issubclass(cls, JointHead) and cls.name == name
