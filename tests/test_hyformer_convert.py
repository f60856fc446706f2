"""Published Hyformer checkpoints converted to tjdkit's layout, against an independent reference of the
published forward; HyformerCheckpoint's safetensors round trip; the seed's KVCache signature.

The reference below restates the published rule (joint_improvement/hyformer at its current layout):
fused qkv, RoPE on interleaved pairs (x0, x1), (x2, x3), ... of each head at frequency
10000^(-i / (d/2)) for pair i, pre-norm RMSNorm blocks, SwiGLU w2(silu(w1 x) * w3 x), a final
RMSNorm and lm/mlm heads tied to the embedding. Attention is written out (softmax of scores), not SDPA.
"""

import json
import math

import pytest
import torch

from tjdkit.errors import TjdkitError
from tjdkit.models.hyformer import Hyformer, HyformerCheckpoint, HyformerConfig, KVCache
from tjdkit.models.hyformer.convert import convert_published, load_published

V, D, H, L, MAX_LEN, EPS = 23, 32, 4, 2, 16, 1e-5
HIDDEN = 256  # the published rule: int(2/3 * 4 * 32) = 85, rounded up to a multiple of 256


def published_config(**extra) -> dict:
    return {"vocab_size": V, "d_model": D, "n_heads": H, "n_layers": L, "max_seq_len": MAX_LEN, "attn_dropout_p": 0.0,
            "rms_norm_eps": EPS, "predictor_dropout_p": 0.0, "predictor_head_depth": 1, "predictor_head_act_fn": "gelu",
            "num_prediction_tasks": None, "prediction_task_type": None, "generator_type": "unconditional", **extra}


def published_state(seed=0) -> dict:
    """Random weights in the published names; scales large enough that RoPE and attention matter."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=0.3):
        return torch.randn(*shape, generator=g) * std

    embed = randn(V, D, std=0.5)
    state = {"embed.weight": embed, "norm.weight": 1 + randn(D, std=0.1), "heads.lm.weight": embed, "heads.mlm.weight": embed}
    for i in range(L):
        p = f"layers.{i}."
        state |= {p + "attn_norm.weight": 1 + randn(D, std=0.1), p + "ffn_norm.weight": 1 + randn(D, std=0.1),
                  p + "attn.qkv.weight": randn(3 * D, D), p + "attn.out.weight": randn(D, D, std=0.1),
                  p + "ffn.w1.weight": randn(HIDDEN, D, std=0.1), p + "ffn.w3.weight": randn(HIDDEN, D, std=0.1),
                  p + "ffn.w2.weight": randn(D, HIDDEN, std=0.05)}
    return state


def write_published(directory, state=None, config=None):
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state if state is not None else published_state(), directory / "model.pt")
    (directory / "model_config.json").write_text(json.dumps(config or published_config()))
    return directory


def reference_logits(state: dict, ids: torch.Tensor, causal: bool, mask: torch.Tensor = None) -> torch.Tensor:
    """The published forward for lm (causal) or mlm (bidirectional, `mask` [B, T] on keys): [B, T, V]."""
    B, T = ids.shape
    d = D // H

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight

    def rope(x):  # [B, T, H, d], interleaved pairs
        freqs = 10000.0 ** (-torch.arange(d // 2, dtype=torch.float32) / (d // 2))  # [d/2]
        angles = torch.arange(T, dtype=torch.float32)[:, None] * freqs  # [T, d/2]
        cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]  # [1, T, 1, d/2]
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)

    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    if causal:
        allowed &= torch.ones(T, T).tril().bool()
    elif mask is not None:
        allowed &= mask.bool()[:, None, None, :]
    x = state["embed.weight"][ids]  # [B, T, D]
    for i in range(L):
        p = f"layers.{i}."
        h = rms(x, state[p + "attn_norm.weight"])
        q, k, v = (h @ state[p + "attn.qkv.weight"].T).split(D, dim=-1)
        q, k, v = (t.reshape(B, T, H, d) for t in (q, k, v))
        q, k = rope(q).transpose(1, 2), rope(k).transpose(1, 2)  # [B, H, T, d]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)  # [B, H, T, T]
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        attended = (weights @ v.transpose(1, 2)).transpose(1, 2).reshape(B, T, D)
        x = x + attended @ state[p + "attn.out.weight"].T
        h = rms(x, state[p + "ffn_norm.weight"])
        gate, up = h @ state[p + "ffn.w1.weight"].T, h @ state[p + "ffn.w3.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ state[p + "ffn.w2.weight"].T
    return rms(x, state["norm.weight"]) @ state["heads.lm.weight"].T


def random_ids(batch=3, length=MAX_LEN, seed=1):
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- conversion -----------------------------------------------------------------------------


def test_converted_lm_and_mlm_logits_equal_the_published_forward(tmp_path):
    state = published_state()
    src = write_published(tmp_path / "published", state)
    dest = convert_published(src, tmp_path / "tjdkit")
    assert {"config.json", "model.safetensors"} <= {p.name for p in dest.iterdir()}
    model = Hyformer.from_pretrained(dest).eval()
    assert (model.config.intermediate_size, model.config.eps, model.config.rope_theta) == (HIDDEN, EPS, 10000.0)
    ids = random_ids()
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # a right-padded row: its real positions must still agree
    with torch.no_grad():
        lm = model(ids, task="lm").logits
        mlm = model(ids, task="mlm", attention_mask=mask).logits
    want_lm = reference_logits(state, ids, causal=True)
    want_mlm = reference_logits(state, ids, causal=False, mask=mask)
    assert want_lm.abs().max() > 1  # logits of a useful scale, so 1e-5 is a real bound
    torch.testing.assert_close(lm, want_lm, atol=1e-5, rtol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(mlm[real], want_mlm[real], atol=1e-5, rtol=1e-5)
    assert (lm - mlm).abs().max() > 1e-2  # the two modes really differ


def test_the_rope_permutation_is_what_makes_them_equal(tmp_path):
    """Guard on the test itself: splitting qkv without permuting q/k rows gives different logits."""
    state = published_state()
    model = load_published(write_published(tmp_path / "published", state))
    naive = Hyformer(model.config).eval()
    naive.load_state_dict(model.state_dict())
    for i, layer in enumerate(naive.model.layers):
        q, k, _ = state[f"layers.{i}.attn.qkv.weight"].split(D)
        layer.attn.q_proj.weight.data.copy_(q)
        layer.attn.k_proj.weight.data.copy_(k)
    ids = random_ids()
    with torch.no_grad():
        assert (naive(ids).logits - reference_logits(state, ids, causal=True)).abs().max() > 1e-3
        torch.testing.assert_close(model(ids).logits, reference_logits(state, ids, causal=True), atol=1e-5, rtol=1e-5)


def test_cli_converts_and_refuses_unsupported_layouts_in_one_line(tmp_path, run_cli):
    state = published_state()
    src = write_published(tmp_path / "ok", state)
    code, out, err = run_cli("models", "convert", str(src), str(tmp_path / "out"))
    assert code == 0, err
    assert "converted" in out and (tmp_path / "out" / "model.safetensors").is_file()
    ids = random_ids(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(Hyformer.from_pretrained(tmp_path / "out")(ids).logits,
                                   reference_logits(state, ids, causal=True), atol=1e-5, rtol=1e-5)

    code, _, err = run_cli("models", "convert", str(src), str(tmp_path / "out"))  # exists, no --force
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("models", "convert", str(src))
    assert code == 2 and "give DEST" in err and len(err.strip().splitlines()) == 1

    # The published prediction head (LayerNorm + classifier) is not tjdkit's: refused unless dropped.
    with_head = dict(state, **{"heads.prediction.norm.weight": torch.ones(D), "heads.prediction.norm.bias": torch.zeros(D),
                               "heads.prediction.classifier.weight": torch.zeros(1, D),
                               "heads.prediction.classifier.bias": torch.zeros(1)})
    src = write_published(tmp_path / "head", with_head, published_config(num_prediction_tasks=1, prediction_task_type="regression"))
    code, _, err = run_cli("models", "convert", str(src), str(tmp_path / "head-out"))
    assert code == 2 and "prediction head" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "head-out").exists()
    code, _, err = run_cli("models", "convert", str(src), str(tmp_path / "head-out"), "--drop-prediction-head")
    assert code == 0, err
    converted = Hyformer.from_pretrained(tmp_path / "head-out")
    assert converted.prediction_head is None
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference_logits(state, ids, causal=True), atol=1e-5, rtol=1e-5)

    # The earlier published layout: a LayerNorm final norm and SwiGLU biases.
    old = {"embed.weight": state["embed.weight"], "final_norm.weight": torch.ones(D), "final_norm.bias": torch.zeros(D),
           "blocks.0.mlp.gate_proj.weight": torch.zeros(4 * D, D), "blocks.0.mlp.gate_proj.bias": torch.zeros(4 * D)}
    src = write_published(tmp_path / "old", old, published_config(n_layers=1))
    code, _, err = run_cli("models", "convert", str(src), str(tmp_path / "old-out"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "LayerNorm final norm" in err and "MLP biases" in err

    # Untied heads cannot be tied without changing the model.
    untied = dict(state, **{"heads.mlm.weight": state["embed.weight"] + 1})
    src = write_published(tmp_path / "untied", untied)
    code, _, err = run_cli("models", "convert", str(src), str(tmp_path / "untied-out"))
    assert code == 2 and "untied mlm head" in err


def test_a_model_pt_that_would_run_code_is_refused_and_runs_nothing(tmp_path, run_cli):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    src = tmp_path / "evil"
    src.mkdir()
    torch.save({"embed.weight": Payload()}, src / "model.pt")
    (src / "model_config.json").write_text(json.dumps(published_config()))
    marker.unlink(missing_ok=True)  # torch.save does not run it; make sure before loading
    code, _, err = run_cli("models", "convert", str(src), str(tmp_path / "out"))
    assert code == 2 and "plain tensors" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_missing_files_and_bad_configs_are_one_line_errors(tmp_path):
    src = tmp_path / "half"
    src.mkdir()
    torch.save(published_state(), src / "model.pt")
    with pytest.raises(TjdkitError, match="no model_config.json"):
        load_published(src)
    write_published(src, config=published_config(n_heads=5))
    with pytest.raises(TjdkitError, match="n_heads"):
        load_published(src)
    write_published(src, config=published_config(n_layers=3))
    with pytest.raises(TjdkitError, match="missing weights layers.2"):
        load_published(src)


# -- HyformerCheckpoint and KVCache ---------------------------------------------------------


def tiny_model(**extra) -> Hyformer:
    torch.manual_seed(0)
    return Hyformer(HyformerConfig(vocab_size=V, d_model=D, n_heads=H, n_layers=L, max_seq_len=MAX_LEN, **extra)).eval()


def test_checkpoint_round_trips_the_state_dict_exactly(tmp_path):
    model = tiny_model(num_prediction_tasks=2)
    saved = HyformerCheckpoint.from_model(model)
    path = saved.save(tmp_path / "checkpoints" / "model.safetensors", safe_serialization=True)
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp file left behind
    loaded = HyformerCheckpoint.load(path)
    expected = model.state_dict()
    assert list(loaded.state_dict) == list(expected)
    for key, value in expected.items():
        assert torch.equal(loaded.state_dict[key], value) and loaded.state_dict[key].dtype == value.dtype, key
    fresh = Hyformer(model.config).eval()
    fresh.load_state_dict(loaded.state_dict)  # strict: every key present
    ids = random_ids()
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)
    # Tied weights are stored once, not three times.
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert "model.embed_tokens.weight" in handle.keys() and "lm_head.weight" not in handle.keys()
    # A directory gets model.safetensors; a wrapped (DDP-style) model gives unprefixed keys.
    wrapper = torch.nn.Module()
    wrapper.module = model
    assert HyformerCheckpoint.from_model(wrapper).state_dict.keys() == expected.keys()
    written = HyformerCheckpoint.from_model(wrapper).save(tmp_path / "dir")
    assert written == tmp_path / "dir" / "model.safetensors"
    assert HyformerCheckpoint.load(tmp_path / "dir").state_dict.keys() == expected.keys()


def test_checkpoint_refuses_pickles_both_ways(tmp_path):
    checkpoint = HyformerCheckpoint.from_model(tiny_model())
    with pytest.raises(TjdkitError, match="safetensors only"):
        checkpoint.save(tmp_path / "x", safe_serialization=False)
    with pytest.raises(TjdkitError, match="safetensors"):
        checkpoint.save(tmp_path / "model.pt")
    torch.save(checkpoint.state_dict, tmp_path / "model.pt")
    with pytest.raises(TjdkitError, match="is a pickle"):
        HyformerCheckpoint.load(tmp_path / "model.pt")
    with pytest.raises(TjdkitError, match="is a pickle"):
        HyformerCheckpoint.load(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(TjdkitError, match="corrupt checkpoint"):
        HyformerCheckpoint.load(tmp_path / "bad.safetensors")


def test_seed_kv_cache_signature_caches_and_checks_sizes():
    from tjdkit.models.hyformer.kv_cache import KVCache as SeedPathKVCache

    assert SeedPathKVCache is KVCache
    model = tiny_model()
    ids = random_ids(batch=2, length=6)
    caches = [KVCache(D, H, MAX_LEN) for _ in model.blocks]
    with torch.no_grad():
        first = model(ids[:, :5], task="lm", kv_caches=caches, use_cache=True)
        step = model(ids[:, 5:], task="lm", kv_caches=first.extras["kv_caches"], use_cache=True)
        full = model(ids, task="lm").logits
    torch.testing.assert_close(step.logits[:, 0], full[:, 5], atol=1e-5, rtol=1e-5)
    assert caches[0].length == 6 and caches[0].key.shape == (2, H, 6, D // H)
    with pytest.raises(ValueError, match="max_seq_len"):
        KVCache(D, H, 4).update(torch.zeros(1, H, 5, D // H), torch.zeros(1, H, 5, D // H))
    with pytest.raises(ValueError, match="do not fit"):
        KVCache(D, 2, MAX_LEN).update(torch.zeros(1, H, 1, D // H), torch.zeros(1, H, 1, D // H))
