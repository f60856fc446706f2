"""Chat sessions: greedy replies equal plain generation; history, formats, interruption."""

import pytest
import torch

from tjdkit.chat import ChatSession, render_prompt, resolve_format, stop_token_ids
from tjdkit.config import GenerationSection
from tjdkit.errors import TjdkitError
from tjdkit.models import load_model

GREEDY = GenerationSection(max_new_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def reference_greedy(model, tokenizer, input_ids, n):
    """Plain greedy decoding without the chat machinery: the independent truth."""
    ids = input_ids
    stops = set(stop_token_ids(tokenizer, model))
    with torch.no_grad():
        for _ in range(n):
            next_id = model(ids).logits[0, -1].argmax()
            if next_id.item() in stops:
                break
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return tokenizer.decode(ids[0, input_ids.shape[1]:], skip_special_tokens=True)


def test_greedy_reply_equals_plain_greedy_decoding(tiny):
    model, tokenizer = tiny
    session = ChatSession(model, tokenizer, GREEDY)
    prompt_ids = session.encode("Hello there")
    pieces = []
    reply = session.reply("Hello there", on_text=pieces.append)
    assert reply.text == reference_greedy(model, tokenizer, prompt_ids, 12).strip()
    assert "".join(pieces).strip() == reply.text
    assert 1 <= reply.tokens <= 12 and reply.tokens_per_second > 0
    assert not reply.interrupted


def test_history_is_carried_and_reset(tiny):
    model, tokenizer = tiny
    session = ChatSession(model, tokenizer, GREEDY, system="Be brief.")
    first = session.reply("first question")
    text = tokenizer.decode(session.encode("second question")[0])
    assert text.startswith("<bos><start_of_turn>user\nBe brief.\n\nfirst question<end_of_turn>")
    assert f"<start_of_turn>model\n{first.text}<end_of_turn>" in text
    assert text.endswith("<start_of_turn>user\nsecond question<end_of_turn>\n<start_of_turn>model\n")
    session.reset()
    assert "first question" not in tokenizer.decode(session.encode("again")[0])


def test_sampling_is_reproducible_with_a_seed(tiny):
    model, tokenizer = tiny
    config = GenerationSection(max_new_tokens=10, temperature=1.0, seed=123)
    one = ChatSession(model, tokenizer, config).reply("hi").text
    two = ChatSession(model, tokenizer, config).reply("hi").text
    assert one == two


def test_formats_resolve_by_template_and_registry():
    _, llama_tok = load_model("tiny-llama")
    _, gpt2_tok = load_model("tiny-gpt2")
    assert resolve_format("auto", llama_tok, "tiny-llama") == "template"
    assert resolve_format("auto", gpt2_tok, "tiny-gpt2") == "gemma"  # no template: Gemma's turns
    assert resolve_format("auto", gpt2_tok, "gemma3") == "raw"  # registered as a pretrained checkpoint
    with pytest.raises(TjdkitError, match="no chat template"):
        resolve_format("template", gpt2_tok)


def test_gemma_fallback_matches_the_gemma_turn_format():
    _, tokenizer = load_model("tiny-gpt2")
    text = render_prompt(tokenizer, [{"role": "user", "content": "Hi"}], "gemma")
    assert text.endswith("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")


def test_raw_format_continues_text_without_history(tiny):
    model, tokenizer = tiny
    session = ChatSession(model, tokenizer, GREEDY, chat_format="raw")
    ids = session.encode("The capital of France is")
    assert ids[0].tolist() == tokenizer("The capital of France is").input_ids
    reply = session.reply("The capital of France is")
    assert reply.text == reference_greedy(model, tokenizer, ids, 12)
    assert session.history == []


def test_ctrl_c_stops_the_reply_and_keeps_the_session(tiny):
    model, tokenizer = tiny
    session = ChatSession(model, tokenizer, GenerationSection(max_new_tokens=200, temperature=1.0, seed=0))
    seen = []

    def interrupt_after_first_piece(text):
        seen.append(text)
        if len(seen) == 1:
            raise KeyboardInterrupt  # what Ctrl-C does while the reply streams

    reply = session.reply("tell me a story", on_text=interrupt_after_first_piece)
    assert reply.interrupted and reply.tokens < 200
    assert len(session.history) == 2  # the partial reply is kept
    assert not session.reply("and then?").interrupted


def test_stop_ids_include_end_of_turn(tiny):
    _, tokenizer = tiny
    ids = stop_token_ids(tokenizer)
    assert tokenizer.eos_token_id in ids
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in ids
