"""Tiny random models with a tokenizer built on the spot: real architectures, no download.

They exist so tests and sanity checks exercise the same code paths as the real model
(KV caches, chat templates, grouped KV heads, sliding windows) in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from tjdkit.data.chat_template import GEMMA_CHAT_TEMPLATE
from tjdkit.data.stemp import render_answer, render_prompt

_ENGLISH = """\
The capital of France is Paris. The quick brown fox jumps over the lazy dog.
Language models predict the next token from the tokens before it. A joint head
predicts several tokens at once, and a verifier keeps the output exact.
Question: what is the answer? Answer: the answer is below. Let's solve this step by step.
Hello! How are you today? I am fine, thank you. What can I help you with?
"""


def tokenizer_corpus() -> list[str]:
    """Deterministic training text: English, chat turns and the stemp task's vocabulary."""
    lines = _ENGLISH.splitlines()
    lines += [render_prompt(c) + render_answer(c) for c in range(-40, 81)]
    lines += ["<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi there!<end_of_turn>"]
    return lines * 2


SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def build_tokenizer(vocab_size: int = 512, chat_template: str | None = GEMMA_CHAT_TEMPLATE, gpt2_style: bool = False):
    """A byte-level BPE trained on `tokenizer_corpus()`; digits are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>"] if gpt2_style else SPECIAL_TOKENS
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(tokenizer_corpus(), trainer)
    if gpt2_style:
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
        )
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", core.token_to_id("<bos>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _llama_config(tokenizer) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _gemma3_config(tokenizer) -> Any:
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _hyformer_config(tokenizer) -> Any:
    from tjdkit.models.hyformer import HyformerConfig

    return HyformerConfig(
        vocab_size=len(tokenizer),
        d_model=64,
        n_heads=4,
        n_layers=2,
        max_seq_len=256,
        num_prediction_tasks=1,
        prediction_task_type="regression",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )


def _smiles_tokenizer() -> Any:
    from tjdkit.models.hyformer.tokenizer import build_smiles_tokenizer

    return build_smiles_tokenizer()


def _gpt2_config(tokenizer) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


@dataclass(frozen=True)
class TinyPreset:
    name: str
    description: str
    params: int  # checked against the built model by the tests
    make_config: Callable[[Any], Any]
    gpt2_style: bool = False
    # Builds the tokenizer instead of the BPE on tokenizer_corpus() (Hyformer reads SMILES).
    make_tokenizer: Optional[Callable[[], Any]] = None


TINY_PRESETS = {
    p.name: p
    for p in [
        TinyPreset("tiny-llama", "random 2-layer Llama (GQA 4q/2kv), local BPE tokenizer", 158_016, _llama_config),
        TinyPreset("tiny-gemma3", "random 2-layer Gemma 3 (MQA, sliding + global)", 103_040, _gemma3_config),
        TinyPreset(
            "tiny-gpt2", "random 2-layer GPT-2, no chat template", 198_208, _gpt2_config, gpt2_style=True
        ),
        TinyPreset(
            "tiny-hyformer",
            "random 2-layer Hyformer (causal LM + MLM + TPSA regression head), SMILES tokenizer",
            116_929,
            _hyformer_config,
            make_tokenizer=_smiles_tokenizer,
        ),
    ]
}


def build_tiny(name: str, seed: int = 0):
    """(model, tokenizer) for a tiny preset; the same seed gives the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    preset = TINY_PRESETS[name]
    if preset.make_tokenizer is not None:
        tokenizer = preset.make_tokenizer()
    else:
        tokenizer = build_tokenizer(chat_template=None if preset.gpt2_style else GEMMA_CHAT_TEMPLATE, gpt2_style=preset.gpt2_style)
    config = preset.make_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.config.name_or_path = name
    return model, tokenizer
