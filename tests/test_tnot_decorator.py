"""enable_tnot: the seeds' decorator on saved models of three architectures, loaded the transformers way."""

from __future__ import annotations

import json

import pytest
import torch

from tjdkit.models import load_model
from tjdkit.tnot import TnotConfig, enable_tnot

PROMPT = "Hello! How are you today?"


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3", "tiny-gpt2"])
def saved(request, tmp_path_factory):
    """A tiny model saved as a plain Hugging Face directory, and its plain greedy output."""
    model, tokenizer = load_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    eos = tokenizer.eos_token_id
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                            eos_token_id=eos, pad_token_id=eos)
    return directory, ids, greedy, type(model)


def _generate(model, ids, **kwargs):
    eos = model.config.eos_token_id
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          eos_token_id=eos, pad_token_id=eos, **kwargs)


def test_auto_class_models_generate_with_tnot(saved):
    from transformers import AutoModelForCausalLM

    directory, ids, greedy, plain_class = saved
    TnotModel = enable_tnot(AutoModelForCausalLM)
    model = TnotModel.from_pretrained(directory, tnot_config=TnotConfig(steps=0, entropy_control=False))
    assert isinstance(model, plain_class) and type(model).__name__ == plain_class.__name__
    assert torch.equal(_generate(model, ids), greedy)  # no steps, no trigger: plain greedy
    model.tnot_config = TnotConfig(steps=4, entropy_threshold=0.0, max_retries=2, on_exhausted="continue")
    out = _generate(model, ids)
    (result,) = model.tnot_results
    assert out.shape[1] == ids.shape[1] + len(result.tokens)
    assert out[0, ids.shape[1]:].tolist() == result.tokens
    assert result.prompt_losses[-1] < result.prompt_losses[0] and result.reflections == 2
    assert model.delta.shape == (1, 1, model.config.get_text_config().hidden_size)
    assert model.high_entropy_detected and model.high_entropy_position == 0
    assert model.entropy_history == result.entropies and model.index == len(result.tokens)
    assert torch.equal(_generate(model, ids, tnot=False), greedy)  # the plain transformers generate


def test_concrete_class_and_default_config(saved):
    directory, ids, greedy, plain_class = saved
    TnotModel = enable_tnot(plain_class, TnotConfig(steps=0, entropy_control=False))
    model = TnotModel.from_pretrained(directory)
    assert isinstance(model, plain_class) and model.tnot_config == TnotConfig(steps=0, entropy_control=False)
    assert torch.equal(_generate(model, ids), greedy)
    model.reset_model_parameters()
    assert model.delta is None and model.tnot_results == []


def test_environment_configures_models_loaded_without_a_config(saved, monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM

    directory, ids, _greedy, _plain = saved
    trace = tmp_path / "entropy.jsonl"
    for name, value in {"times": "2", "entropy_threshold": "0", "adaptive_entropy": "False",
                        "record_entropy": "True", "entropy_output_file": str(trace)}.items():
        monkeypatch.setenv(name, value)
    model = enable_tnot(AutoModelForCausalLM).from_pretrained(directory)
    assert model.tnot_config.steps == 2 and model.tnot_config.entropy_threshold == 0.0
    _generate(model, ids)
    _generate(model, ids)
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    tokens = len(model.tnot_results[0].tokens)
    assert len(lines) == 2 * tokens  # appended, one line per token and call
    assert {"prompt", "position", "token", "entropy", "threshold", "reflected"} <= set(lines[0])


def test_batches_through_generate_keep_per_row_state(saved):
    from transformers import AutoModelForCausalLM

    directory, _ids, _greedy, _plain = saved
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = enable_tnot(AutoModelForCausalLM).from_pretrained(directory, tnot_config=TnotConfig(steps=3))
    batch = tokenizer([PROMPT, "The capital of France is Paris. The quick"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    rows = model.tnot_results
    assert out.shape[0] == 2 and len(rows) == 2
    alone = tokenizer(["The capital of France is Paris. The quick"], return_tensors="pt")
    model.generate(**alone, max_new_tokens=6, do_sample=False)
    assert model.tnot_results[0].tokens == rows[1].tokens
    assert model.tnot_results[0].prompt_losses == pytest.approx(rows[1].prompt_losses, abs=1e-4)
