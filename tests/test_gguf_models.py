"""Any .gguf file: converted once through the real transformers GGUF loader, then cached."""

import json

import pytest
import torch

from tests.gguf_fixture import write_tiny_gguf
from tjdkit.models import cache as cache_mod
from tjdkit.models import load_model
from tjdkit.models.cache import cached_entries, read_manifest
from tjdkit.models.tiny import build_tiny


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny-llama.gguf")


def test_gguf_file_converts_once_and_matches_the_original(tiny_gguf, monkeypatch):
    original, original_tok = build_tiny("tiny-llama")
    stages = []
    model, tokenizer = load_model(str(tiny_gguf), on_stage=stages.append)
    assert "de-quantising the weights to float32" in stages
    ids = original_tok("What is 20°C in Fahrenheit?", return_tensors="pt").input_ids
    assert tokenizer("What is 20°C in Fahrenheit?", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, original(ids).logits, atol=1e-5)

    (entry, manifest), = cached_entries()
    assert manifest["source"] == str(tiny_gguf.resolve())

    def must_not_convert(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(cache_mod, "_convert_gguf", must_not_convert)
    again, _ = load_model(str(tiny_gguf))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_models_convert_and_ls_show_the_converted_file(run_cli, tiny_gguf, tmp_path):
    code, out, _ = run_cli("models", "convert", str(tiny_gguf))
    assert code == 0 and "converted" in out
    code, out, _ = run_cli("models", "convert", str(tiny_gguf))
    assert code == 0 and "already cached" in out
    code, out, _ = run_cli("models", "ls", "--json", str(tmp_path / "ls.json"))
    rows = json.loads((tmp_path / "ls.json").read_text())
    converted = [row for row in rows if row["source"] == "converted GGUF file"]
    assert [row["name"] for row in converted] == [str(tiny_gguf.resolve())]
    assert converted[0]["cache_bytes"] > 0


def test_chat_one_shot_on_a_gguf_file(run_cli, tiny_gguf):
    code, out, err = run_cli("chat", "--model", str(tiny_gguf), "-n", "4", "-t", "0", "--prompt", "Hello")
    assert code == 0 and out.strip() and "tok/s" in err


def test_a_changed_gguf_file_gets_a_fresh_cache_entry(tiny_gguf):
    load_model(str(tiny_gguf))
    write_tiny_gguf(tiny_gguf, seed=1)  # same path, new content
    load_model(str(tiny_gguf))
    assert len(cached_entries()) == 2
    assert all(read_manifest(entry)["source"] == str(tiny_gguf.resolve()) for entry, _ in cached_entries())
