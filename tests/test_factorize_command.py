"""`tjdkit factorize` end to end on the tiny presets: the report, saving and reloading,
compression targets, activation-aware Tucker and every user error. Truths: the in-memory
factorised model's logits, the parameter formula written out, and exact full-rank inputs."""

from __future__ import annotations

import json

import pytest
import torch

from tjdkit.errors import TjdkitError
from tjdkit.factorize import attention_shape, attention_tensor, tucker_layer
from tjdkit.factorize.convert import FactorizeOptions, decoder_layers, factorize_model
from tjdkit.factorize.budget import compression_ranks, factorized_num_parameters, parse_compression
from tjdkit.factorize.texts import calibration_ids, heldout_ids, perplexity
from tjdkit.factorize.tucker import FactorizedAttentionProjections, activation_scale, dense_num_parameters
from tjdkit.models import load_model

FAST = dict(eval_tokens=96, calibration_tokens=64)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def _reload_equals_in_memory(out, preset, prompt_ids, **options):
    """Truth for a saved model: the same factorisation done in memory. Returns (model, report)."""
    model, tokenizer = load_model(preset)
    report = factorize_model(model, tokenizer, FactorizeOptions(**{**FAST, "eval_tokens": 0, **options}))
    reloaded, _ = load_model(str(out))
    assert torch.allclose(_logits(reloaded, prompt_ids), _logits(model, prompt_ids), atol=1e-5)
    return model, report


@pytest.fixture
def prompt_ids():
    return torch.tensor([[2, 17, 45, 99, 123, 7, 300, 51, 8, 64, 201, 33, 90, 11, 400, 5] * 3])


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("aware", [False, True])
def test_full_energy_keeps_the_model(preset, aware, prompt_ids):
    model, tokenizer = load_model(preset)
    reference = _logits(model, prompt_ids)
    options = FactorizeOptions(rank="energy", energy=1.0, activation_aware=aware, **FAST)
    report = factorize_model(model, tokenizer, options)
    assert len(report.layers) == len(decoder_layers(model))
    assert all(r.relative_error < 1e-5 for r in report.layers)
    assert isinstance(decoder_layers(model)[0].self_attn.tucker, FactorizedAttentionProjections)
    assert torch.allclose(_logits(model, prompt_ids), reference, atol=1e-4)
    assert report.perplexity_after == pytest.approx(report.perplexity_before, rel=1e-4)


def test_compression_ranks_are_the_largest_within_budget():
    model, _ = load_model("tiny-gemma3")
    shape = attention_shape(decoder_layers(model)[0].self_attn, model.config)
    for factor in (2.0, 4.0):
        r1, r2, r3 = compression_ranks(shape, factor)
        size = shape.d_model * r1 + shape.head_dim * r2 + (2 * shape.heads + 2 * shape.kv_heads) * r1 * r2
        assert size == factorized_num_parameters(shape, r1, r2)
        assert size <= dense_num_parameters(shape) / factor
        bigger_r2 = max(1, min(shape.head_dim, round((r1 + 1) * shape.head_dim / shape.d_model)))
        assert factorized_num_parameters(shape, r1 + 1, bigger_r2) > dense_num_parameters(shape) / factor
        assert r3 == 4
    assert parse_compression("2x") == 2.0 and parse_compression("64,32,4") is None
    with pytest.raises(TjdkitError, match="above 1x"):
        parse_compression("1x")


def test_factorized_model_saves_smaller_and_reloads_identically(tmp_path, run_cli, prompt_ids):
    out = tmp_path / "fz"
    code, stdout, err = run_cli(
        "factorize", "tiny-gemma3", "--rank", "2x", "--eval-tokens", "96", "--calibration-tokens", "64", "--out", str(out),
        "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "s.png"),
    )
    assert code == 0, err
    assert "perplexity on 96 held-out tokens" in stdout and "saved to" in stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["compression"] >= 2.0 and len(report["layers"]) == 2
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"

    from safetensors.torch import load_file

    state = load_file(out / "model.safetensors")
    assert not any(key.endswith("q_proj.weight") for key in state)
    assert any(".self_attn.tucker.core_q" in key for key in state)

    _reload_equals_in_memory(out, "tiny-gemma3", prompt_ids, rank="2x")

    code, stdout, err = run_cli("chat", "--model", str(out), "--prompt", "hello", "-n", "5", "-t", "0")
    assert code == 0, err


def test_materialized_model_is_a_plain_dense_model(tmp_path, run_cli, prompt_ids):
    out = tmp_path / "dense"
    code, _, err = run_cli("factorize", "tiny-llama", "--rank", "40,10,3", "--materialize", "--eval-tokens", "0",
                           "--calibration-tokens", "64", "--out", str(out))
    assert code == 0, err
    model, _ = _reload_equals_in_memory(out, "tiny-llama", prompt_ids, rank="40,10,3", materialize=True)
    assert isinstance(decoder_layers(model)[0].self_attn.q_proj, torch.nn.Linear)


def test_layer_subsets_and_per_layer_ranks():
    model, tokenizer = load_model("tiny-llama")
    options = FactorizeOptions(rank="2x", layers="last:1", layer_ranks={"1": "20,8,4"}, **{**FAST, "eval_tokens": 0})
    report = factorize_model(model, tokenizer, options)
    assert [r.layer for r in report.layers] == [1] and report.layers[0].ranks == (20, 8, 4)
    layers = decoder_layers(model)
    assert isinstance(layers[0].self_attn.q_proj, torch.nn.Linear)
    assert hasattr(layers[1].self_attn, "tucker")
    assert report.metadata()["layers"] == {"1": {"ranks": [20, 8, 4]}}


def test_activation_aware_tucker_wins_on_the_inputs_it_is_weighted_by():
    """Inputs dominated by a few features: weighting by their RMS lowers the error on such inputs."""
    generator = torch.Generator().manual_seed(0)
    d_model, hd, heads = 32, 8, 2
    tensor = torch.randn(d_model, hd, 4, heads, generator=generator)
    feature_rms = torch.ones(d_model)
    feature_rms[:4] = 30.0
    inputs = torch.randn(512, d_model, generator=generator) * feature_rms
    ranks = (8, 8, 4)

    def input_error(decomposition):
        residual = (tensor - decomposition.reconstruct())[:, :, :3]  # q, k, v slices act on inputs
        return torch.linalg.norm(torch.einsum("nm,mdrh->ndrh", inputs, residual))

    aware = tucker_layer(tensor, ranks, input_scale=activation_scale(inputs))
    plain = tucker_layer(tensor, ranks)
    assert input_error(aware) < 0.5 * input_error(plain)
    full = tucker_layer(tensor, (d_model, hd, 4), input_scale=activation_scale(inputs))
    assert full.relative_error(tensor) < 1e-5


def test_texts(tmp_path):
    _, tokenizer = load_model("tiny-llama")
    held = heldout_ids(tokenizer, 128)
    assert held.shape == (1, 128) and torch.equal(held, heldout_ids(tokenizer, 128))
    assert calibration_ids("stemp", tokenizer, 64).shape[1] == 64
    text_file = tmp_path / "cal.txt"
    text_file.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    assert calibration_ids(str(text_file), tokenizer, 32).shape[1] == 32
    assert calibration_ids("The quick brown fox jumps over the lazy dog. " * 5, tokenizer, 32).shape[1] > 16
    with pytest.raises(TjdkitError, match="calibration file not found"):
        calibration_ids(str(tmp_path / "missing.txt"), tokenizer)
    with pytest.raises(TjdkitError, match="too short"):
        calibration_ids("hi", tokenizer)


def test_perplexity_matches_the_models_own_loss():
    model, tokenizer = load_model("tiny-gemma3")
    ids = heldout_ids(tokenizer, 64)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert perplexity(model, ids) == pytest.approx(float(torch.exp(loss)), rel=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rank", "0,4,4"], "must be at least 1"),
        (["--rank", "-3,4,4"], "must be at least 1"),
        (["--rank", "64,8"], "expected 3 ranks"),
        (["--rank", "a,b,c"], "is not an integer"),
        (["--rank", "65,8,4"], "exceeds its size 64"),
        (["--rank", "1x"], "above 1x"),
        (["--rank", "10000x"], "out of reach"),
        (["--layers", "7"], "out of range"),
        (["--layers", "last:9"], "asks for 9 layers"),
        (["--layers", "x"], "bad layer spec"),
        (["--method", "svd"], "unknown method"),
        (["--energy", "1.5"], "energy"),
        (["--plot", "spectra.jpg"], "PNG"),
        (["--method", "tpa", "--materialize"], "--materialize is for --method tucker"),
        (["--method", "tpa", "--rank", "2x"], "for --method tucker"),
        (["--calibration", "./missing.txt"], "calibration file not found"),
        (["--set", "factorize.layer_ranks={\"5\": \"8,8,4\"}"], "layer_ranks names layer '5'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(run_cli, tmp_path, args, message):
    out = tmp_path / "never"
    code, _, err = run_cli("factorize", "tiny-llama", "--eval-tokens", "0", "--out", str(out), *args)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_unsupported_architecture_and_existing_out(run_cli, tmp_path):
    code, _, err = run_cli("factorize", "tiny-gpt2", "--eval-tokens", "0")
    assert code == 2 and "unsupported architecture" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli("factorize", "tiny-llama", "--eval-tokens", "0", "--out", str(out))
    assert code == 2 and "already exists" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_tpa_full_rank_keeps_the_model_and_reloads(tmp_path, run_cli, prompt_ids):
    out = tmp_path / "tpa"
    code, stdout, err = run_cli(
        "factorize", "tiny-llama", "--method", "tpa", "--rank", "4,2,2", "--eval-tokens", "96",
        "--calibration-tokens", "64", "--out", str(out), "--json", str(tmp_path / "r.json"),
    )
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["perplexity_after"] == pytest.approx(report["perplexity_before"], rel=1e-4)
    # tiny-llama: 4 query heads, 2 KV heads, head_dim 16 -> dense 2*2*16 = 64 numbers, TPA (2+2)(4+16) = 80.
    assert [row["kv_numbers_after"] for row in report["layers"]] == [80, 80]
    assert [row["kv_numbers_before"] for row in report["layers"]] == [64, 64]
    assert "KV cache of factors" in stdout  # the honest note: no saving on this model
    original, _ = load_model("tiny-llama")
    reloaded, _ = load_model(str(out))
    assert torch.allclose(_logits(reloaded, prompt_ids), _logits(original, prompt_ids), atol=1e-4)
    code, _, err = run_cli("chat", "--model", str(out), "--prompt", "hello", "-n", "5", "-t", "0")
    assert code == 0, err


def test_tpa_lower_rank_reloads_identically(tmp_path, run_cli, prompt_ids):
    out = tmp_path / "tpa2"
    code, _, err = run_cli("factorize", "tiny-gemma3", "--method", "tpa", "--rank", "2,1,1", "--steps", "20",
                           "--eval-tokens", "0", "--calibration-tokens", "64", "--out", str(out))
    assert code == 0, err
    _, report = _reload_equals_in_memory(out, "tiny-gemma3", prompt_ids, method="tpa", rank="2,1,1", steps=20)
    assert all(row.ranks == (2, 1, 1) for row in report.layers)


@pytest.mark.parametrize(
    "rank, message",
    [("5,1,1", "rank 5 for q exceeds"), ("4,2,1", "rank 2 for k exceeds"), ("0,1,1", "at least 1"), ("2,1", "3 ranks")],
)
def test_tpa_rank_errors(run_cli, rank, message):
    code, _, err = run_cli("factorize", "tiny-gemma3", "--method", "tpa", "--rank", rank, "--eval-tokens", "0")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
