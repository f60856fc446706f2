"""Prompts as a model expects them: which chat format suits it, the rendered turns, the tokens
that end a reply. Shared by chat, TNOT and anything else that talks to a model in turns."""

from __future__ import annotations

from typing import Optional

from tjdkit.data.chat_template import GEMMA_CHAT_TEMPLATE


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """EOS plus Gemma's <end_of_turn>, so a chat reply ends where its turn does."""
    ids: list[int] = []
    candidates = [tokenizer.eos_token_id]
    if model is not None:
        configured = getattr(model.generation_config, "eos_token_id", None)
        candidates += configured if isinstance(configured, list) else [configured]
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if end_of_turn is not None and end_of_turn != tokenizer.unk_token_id:
        candidates.append(end_of_turn)
    for token_id in candidates:
        if isinstance(token_id, int) and token_id not in ids:
            ids.append(token_id)
    return ids


def resolve_format(requested: str, tokenizer, model_name: Optional[str] = None) -> str:
    """Turn `auto` into template, raw (pretrained checkpoints) or gemma (Gemma's turns)."""
    from tjdkit.errors import TjdkitError
    from tjdkit.models.registry import registered

    if requested == "template" and not tokenizer.chat_template:
        raise TjdkitError("this tokenizer has no chat template (use --format gemma or --format raw)")
    if requested != "auto":
        return requested
    if tokenizer.chat_template:
        return "template"
    info = registered(model_name) if model_name else None
    return "raw" if info is not None and info.pretrained_only else "gemma"


def render_prompt(tokenizer, messages: list[dict], chat_format: str = "template") -> str:
    """Render chat turns with the tokenizer's template (`template`) or Gemma's format (`gemma`)."""
    template = tokenizer.chat_template if chat_format == "template" else GEMMA_CHAT_TEMPLATE
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=True, tokenize=False
        )
    except Exception:  # noqa: BLE001 - templates that reject a system role raise jinja errors
        if not messages or messages[0]["role"] != "system":
            raise
        system, first, *rest = messages
        merged = {"role": first["role"], "content": f"{system['content']}\n\n{first['content']}"}
        return tokenizer.apply_chat_template(
            [merged, *rest], chat_template=template, add_generation_prompt=True, tokenize=False
        )
