"""The tiny GGUF fixture round-trips through transformers' GGUF loader."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.gguf_fixture import write_tiny_gguf
from tjdkit.models.tiny import build_tiny, tokenizer_corpus

PROMPT = "What is 20°C in Fahrenheit?"


def test_tiny_gguf_round_trip(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny-llama.gguf", seed=0)
    model, tokenizer = build_tiny("tiny-llama", seed=0)

    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ids = tokenizer(PROMPT).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert loaded_tokenizer(PROMPT).input_ids == ids
    # the whole training corpus (digits, °, chat turns with special tokens) encodes the same
    for text in tokenizer_corpus():
        assert loaded_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert loaded_tokenizer.decode(ids, skip_special_tokens=True) == PROMPT

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    assert loaded.config.num_key_value_heads == model.config.num_key_value_heads
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        expected = model.eval()(input_ids).logits
        actual = loaded(input_ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
