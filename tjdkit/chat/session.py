"""A multi-turn chat session over any causal LM, streaming text through a callback.

The session owns the history and the prompt format; the caller owns the terminal.
Ctrl-C during a reply ends that reply (the partial text stays in the history) and
leaves the session usable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from tjdkit.config import GenerationSection
from tjdkit.decoding import fit_to_context
from tjdkit.models.prompts import render_prompt, resolve_format, stop_token_ids

TextCallback = Callable[[str], None]


@dataclass
class Reply:
    text: str
    tokens: int
    seconds: float
    first_token_seconds: Optional[float]
    interrupted: bool = False
    stats: Optional[object] = None  # tjdkit.decoding.DecodeStats when a joint head decoded the reply
    tnot: Optional[object] = None  # tjdkit.tnot.TnotResult when TNOT generated the reply

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def _make_streamer(tokenizer, on_text: TextCallback):
    from transformers import TextStreamer

    class _CallbackStreamer(TextStreamer):
        """Decodes incrementally (never emitting half a UTF-8 character) and counts tokens."""

        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.generated = 0
            self.first_token_at: Optional[float] = None
            self.pieces: list[str] = []

        def put(self, value):
            if not self.next_tokens_are_prompt:
                self.generated += value.numel()
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                self.pieces.append(text)
                on_text(text)

    return _CallbackStreamer()


class ChatSession:
    def __init__(
        self,
        model,
        tokenizer,
        generation: Optional[GenerationSection] = None,
        system: Optional[str] = None,
        chat_format: str = "auto",
        model_name: Optional[str] = None,
        head=None,
        head_mode: str = "verify",
        tnot=None,
    ):
        from tjdkit.errors import TjdkitError

        if head is not None and tnot is not None:
            raise TjdkitError("choose a joint head (--head) or TNOT (--tnot), not both")
        self.model = model
        self.head = head
        self.tnot = tnot  # a TnotConfig: every reply runs TNOT from a fresh state
        self.head_mode = head_mode
        self.tokenizer = tokenizer
        self.generation = generation or GenerationSection()
        self.system = system
        self.format = resolve_format(chat_format, tokenizer, model_name)
        self.history: list[dict] = []
        self.stop_ids = stop_token_ids(tokenizer, model)
        if self.generation.seed is not None:
            import torch

            torch.manual_seed(self.generation.seed)

    def reset(self) -> None:
        self.history.clear()

    def messages_for(self, user_text: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": user_text}]

    def encode(self, user_text: str):
        """Token ids of the whole prompt; the oldest turns are dropped if it would not fit."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if self.format == "raw":
            return self.tokenizer(user_text, return_tensors="pt").input_ids
        while True:
            text = render_prompt(self.tokenizer, self.messages_for(user_text), self.format)
            ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            too_long = limit is not None and ids.shape[1] + self.generation.max_new_tokens > limit
            if not too_long or not self.history:
                return ids
            del self.history[:2]

    def reply(self, user_text: str, on_text: Optional[TextCallback] = None) -> Reply:
        import torch

        input_ids = self.encode(user_text).to(self.model.device)
        streamer = _make_streamer(self.tokenizer, on_text or (lambda _text: None))
        started = time.perf_counter()
        interrupted, stats, tnot = False, None, None
        try:
            if self.tnot is not None:
                tnot = self._generate_with_tnot(input_ids, streamer)
            else:
                with torch.inference_mode():
                    if self.head is None:
                        self._generate_plain(input_ids, streamer)
                    else:
                        stats = self._generate_with_head(input_ids, streamer)
        except KeyboardInterrupt:
            interrupted = True
        streamer.end()
        seconds = time.perf_counter() - started
        text = "".join(streamer.pieces)
        text = text if self.format == "raw" else text.strip()
        if self.format != "raw":
            self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": text}]
        first = streamer.first_token_at - started if streamer.first_token_at else None
        return Reply(text, streamer.generated, seconds, first, interrupted, stats, tnot)

    def _generate_plain(self, input_ids, streamer) -> None:
        import torch
        from transformers import GenerationConfig

        g = self.generation
        sampling = g.temperature > 0
        config = GenerationConfig(
            max_new_tokens=fit_to_context(self.model, input_ids.shape[1], g.max_new_tokens),
            do_sample=sampling,
            temperature=g.temperature if sampling else None,
            top_k=g.top_k if sampling else None,
            top_p=g.top_p if sampling else None,
            repetition_penalty=g.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0],
        )
        self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config, streamer=streamer
        )

    def _generate_with_head(self, input_ids, streamer):
        """tjdkit's own KV-cached decoding with the joint head; tokens stream as each step accepts them."""
        import torch

        from tjdkit.decoding import generate

        g = self.generation
        sampling = g.temperature > 0
        lossy = self.head_mode == "draft"  # the head's joint alone: no penalty, no filters
        streamer.put(input_ids[0].cpu())  # the prompt: the streamer skips it
        _, stats = generate(
            self.model,
            input_ids,
            mode=self.head_mode,
            head=self.head,
            max_new_tokens=g.max_new_tokens,
            eos_token_ids=self.stop_ids,
            temperature=g.temperature,
            top_k=g.top_k if sampling and not lossy else None,
            top_p=g.top_p if sampling and not lossy else None,
            repetition_penalty=1.0 if lossy else g.repetition_penalty,
            on_tokens=lambda tokens: streamer.put(torch.tensor(tokens)),
        )
        return stats

    def _generate_with_tnot(self, input_ids, streamer):
        """TNOT over the whole rendered prompt (template tokens as they are); tokens stream as chosen."""
        import torch

        from tjdkit.decoding import Sampling
        from tjdkit.tnot.generate import tnot_generate

        g = self.generation
        streamer.put(input_ids[0].cpu())  # the prompt: the streamer skips it
        (result,) = tnot_generate(
            self.model,
            input_ids,
            config=self.tnot,
            max_new_tokens=g.max_new_tokens,
            eos_token_ids=self.stop_ids,
            sampling=Sampling.from_generation(g),
            on_token=lambda _row, record: streamer.put(torch.tensor([record.token])),
        )
        return result
