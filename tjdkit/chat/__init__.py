"""Chat: a multi-turn session over any causal LM that streams its replies, decoded plainly, by
a joint head (verify or draft) or with TNOT.

    session = ChatSession(model, tokenizer); reply = session.reply("Hello", on_text=print)
"""

from tjdkit.chat.session import ChatSession, Reply
from tjdkit.models.prompts import render_prompt, resolve_format, stop_token_ids

__all__ = ["ChatSession", "Reply", "render_prompt", "resolve_format", "stop_token_ids"]
