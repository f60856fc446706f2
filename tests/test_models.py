"""Model registry: name resolution, tiny presets, loading and its errors."""

import time

import pytest
import torch

from tjdkit.errors import TjdkitError
from tjdkit.models import REGISTERED, load_model, resolve_dtype, resolve_model
from tjdkit.models.tiny import TINY_PRESETS, build_tiny


def test_names_and_aliases_resolve():
    assert resolve_model("gemma3").kind == "gguf"
    assert resolve_model("gemma3").gguf.key == resolve_model("gemma3-270m").gguf.key == "gemma3-270m"
    for name in TINY_PRESETS:
        assert resolve_model(name).kind == "tiny"


def test_paths_and_hub_ids(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    with pytest.raises(TjdkitError, match="no config.json"):
        resolve_model(str(model_dir))
    (model_dir / "config.json").write_text("{}")
    assert resolve_model(str(model_dir)).kind == "directory"
    with pytest.raises(TjdkitError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "x.gguf"))
    with pytest.raises(TjdkitError, match="path not found"):
        resolve_model("./does/not/exist")
    with pytest.raises(TjdkitError, match="empty model name"):
        resolve_model("  ")
    assert resolve_model("google/gemma-3-1b-it").kind == "hub"
    assert resolve_model("gpt2").kind == "hub"


def test_offline_hub_id_fails_fast_with_one_clear_message():
    started = time.time()
    with pytest.raises(TjdkitError) as err:
        load_model("no-such-org/no-such-model")
    assert time.time() - started < 10
    assert "unknown model 'no-such-org/no-such-model'" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(TINY_PRESETS))
def test_tiny_presets_match_their_registry_entry_and_are_seeded(name):
    model, tokenizer = build_tiny(name, seed=0)
    info = next(i for i in REGISTERED if i.name == name)
    assert sum(p.numel() for p in model.parameters()) == info.params
    assert model.config.vocab_size == len(tokenizer)
    same, _ = build_tiny(name, seed=0)
    other, _ = build_tiny(name, seed=1)
    first = next(model.parameters())
    assert torch.equal(first, next(same.parameters()))
    assert not torch.equal(first, next(other.parameters()))


def test_tiny_tokenizer_round_trips_text():
    _, tokenizer = build_tiny("tiny-llama")
    text = "What is 23°C in Fahrenheit? 73.4"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    digits = tokenizer.convert_ids_to_tokens(tokenizer("1234", add_special_tokens=False).input_ids)
    assert digits == ["1", "2", "3", "4"]


def test_load_model_dtype_device_and_eval_mode():
    model, tokenizer = load_model("tiny-gemma3", dtype="bfloat16", device="cpu")
    assert not model.training
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.device.type == "cpu"
    assert tokenizer.chat_template


def test_dtype_names():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16
    with pytest.raises(TjdkitError, match="unknown dtype"):
        resolve_dtype("float8")


def test_bad_device_is_a_user_error():
    with pytest.raises(TjdkitError, match="device"):
        load_model("tiny-llama", device="nonsense")


def test_saved_directory_loads_back_identically(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, tokenizer_again = load_model(str(tmp_path))
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    assert tokenizer_again("hello world", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, again(ids).logits)
