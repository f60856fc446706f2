"""TNOT on the bundled Gemma 3 270M. Slow: loads the real model."""

import json
import subprocess
import sys

import pytest
import torch

from tests.test_tnot_command import _drive_through_a_terminal

pytestmark = pytest.mark.slow

PROMPT = "[QUESTION]\nWhat is 21°C in Fahrenheit?\n[ANSWER]"


@pytest.fixture(scope="module")
def gemma_dir():
    from tjdkit.models import ensure_converted, resolve_model

    return ensure_converted(resolve_model("gemma3").gguf)


def test_enable_tnot_on_gemma_is_greedy_without_steps_and_fits_the_prompt_with_them(gemma_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tjdkit.tnot import TnotConfig, enable_tnot

    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    model = enable_tnot(AutoModelForCausalLM).from_pretrained(
        gemma_dir, dtype=torch.float32, tnot_config=TnotConfig(steps=0, entropy_control=False))
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    settings = dict(attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    greedy = model.generate(ids, tnot=False, **settings)
    assert torch.equal(model.generate(ids, **settings), greedy)
    model.tnot_config = TnotConfig(steps=3)
    model.generate(ids, **settings)
    (result,) = model.tnot_results
    assert result.prompt_ce_after < result.prompt_ce_before  # measured 3.08 -> 2.36 on stemp prompts
    assert result.prompt_seconds < 10


def test_tnot_command_with_compare_on_gemma(tmp_path):
    report = tmp_path / "tnot.json"
    result = subprocess.run(
        [sys.executable, "-m", "tjdkit", "tnot", "--dataset", "stemp", "--limit", "1", "--max-new-tokens", "32",
         "--compare", "--json", str(report)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    plain, tnot = json.loads(report.read_text())["summary"]
    assert plain["mode"] == "plain" and tnot["mode"] == "tnot" and tnot["latency_ratio"] > 0
    assert tnot["prompt_ce_after"] < tnot["prompt_ce_before"]


def test_chat_with_tnot_on_gemma_through_a_terminal():
    text = _drive_through_a_terminal(
        ["chat", "--tnot", "--entropy-threshold", "3", "-n", "24", "-t", "0"], ["What is 3 C in F?"], timeout=300)
    assert "TNOT: 3 steps" in text and "tok/s" in text and "nats" in text
    assert "Traceback" not in text
