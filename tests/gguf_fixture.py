"""A tiny GGUF file built on the spot, for tests of the GGUF loading path (no download).

`write_tiny_gguf` writes `build_tiny("tiny-llama")` -- weights and tokenizer -- as a llama-architecture
GGUF in plain float32, laid out the way llama.cpp's `convert_hf_to_gguf.py` would write it, so that

    AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

give back the same logits (float32 round trip, exact up to float noise) and the same token ids.

Notes on the round trip:

- Q/K rows are written with llama.cpp's rotary permutation (`_llama_cpp_permute`); transformers'
  `LlamaTensorProcessor` undoes it on load.
- The tokenizer is stored as `tokenizer.ggml.model = "gpt2"` (byte-level BPE: tokens, token types,
  merges). transformers rebuilds it as a `GPT2Tokenizer`, whose pre-tokenizer is the GPT-2 regex plus
  ByteLevel, where the original has `Digits(individual_digits=True)` in front. The vocabulary was
  trained with digits split apart, so there is no merge joining a digit to anything, and both give
  the same ids (the test checks the whole training corpus, not just one prompt).
- BOS: the original prepends `<bos>` through its post-processor; the file sets
  `tokenizer.ggml.add_bos_token = true`, which makes the loaded tokenizer prepend it too, so the ids
  match including the leading `<bos>`. No EOS is added by either.
- The six special tokens (`<pad>`, `<eos>`, `<bos>`, `<unk>`, `<start_of_turn>`, `<end_of_turn>`) are
  token type CONTROL, so the loaded tokenizer keeps them whole and treats them as special.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

# gguf.TokenType values (llama.cpp's llama_token_type)
_NORMAL, _CONTROL = 1, 3


def _llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py): HF's half-split rotary layout to GGML's
    interleaved one. transformers' `LlamaTensorProcessor._reverse_permute_weights` is its inverse."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tensor_name(name_map, hf_name: str) -> str:
    base, suffix = hf_name.rsplit(".", 1)
    gguf_name = name_map.get_name(base)
    if gguf_name is None:
        raise KeyError(f"no GGUF name for {hf_name}")
    return f"{gguf_name}.{suffix}"


def write_tiny_gguf(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write a tiny random Llama model with its tokenizer as a .gguf file that transformers can load.

    The model and tokenizer are `tjdkit.models.tiny.build_tiny("tiny-llama", seed=seed)`; the same seed
    gives the same file contents. Tensors are float32. Returns `path`.
    """
    import gguf

    from tjdkit.models.tiny import build_tiny

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = build_tiny("tiny-llama", seed=seed)
    cfg = model.config
    n_head, n_head_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope_theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)

    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])

    # --- model metadata (llama.* keys read by transformers' GGUF_CONFIG_MAPPING["llama"])
    writer.add_name("tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)

    # --- tokenizer: byte-level BPE, tokens spelled in the GPT-2 byte alphabet as in tokenizer.json
    vocab = tokenizer.get_vocab()
    id_to_token = {i: t for t, i in vocab.items()}
    assert sorted(id_to_token) == list(range(len(id_to_token))) == list(range(cfg.vocab_size))
    tokens = [id_to_token[i] for i in range(len(id_to_token))]
    special_ids = set(tokenizer.all_special_ids)
    token_types = [_CONTROL if i in special_ids else _NORMAL for i in range(len(tokens))]
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]

    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(True)  # the original's post-processor prepends <bos>
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    # --- tensors, named as llama.cpp names them
    name_map = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        data = tensor.detach().to("cpu").float().numpy().copy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = _llama_cpp_permute(data, n_head, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = _llama_cpp_permute(data, n_head, n_head_kv)
        writer.add_tensor(_tensor_name(name_map, hf_name), np.ascontiguousarray(data, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
