"""TNOT against independent truths: plain greedy decoding, the prompt CE computed through the
model's own forward, a reflection re-done by re-encoding the whole context, single-prompt runs."""

from __future__ import annotations

import math

import pytest
import torch

from tjdkit.errors import TjdkitError
from tjdkit.models import load_model
from tjdkit.tnot import EntropyMonitor, TnotConfig, adaptive_threshold, config_from_env, entropy, tnot_generate

PROMPT = "[QUESTION]\nWhat is 20°C in Fahrenheit?\n[ANSWER]"
ARCHITECTURES = ["tiny-llama", "tiny-gemma3", "tiny-gpt2"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny(request):
    model, tokenizer = load_model(request.param)
    return model, tokenizer


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


def _ids(tokenizer, text=PROMPT):
    return tokenizer(text, return_tensors="pt").input_ids


def _with_delta(model, ids, delta):
    """Full no-cache forward with `delta` added to the final hidden state before the output layer."""
    head = model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0] + delta,))
    try:
        return model(input_ids=ids).logits[0].float()  # [T, V]
    finally:
        handle.remove()


# -- decoding parity ------------------------------------------------------------------------


def test_no_steps_and_no_entropy_control_is_plain_greedy(tiny):
    model, tokenizer = tiny
    ids = _ids(tokenizer)
    eos = tokenizer.eos_token_id
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos)[0, ids.shape[1]:].tolist()
    (result,) = tnot_generate(model, ids, config=TnotConfig(steps=0, entropy_control=False), max_new_tokens=24,
                              eos_token_ids=[eos])
    assert result.tokens == expected
    assert result.reflections == 0 and not result.prompt_losses
    assert all(record.threshold is None for record in result.records)


def test_works_under_inference_mode(llama):
    model, tokenizer = llama
    ids = _ids(tokenizer)
    (outside,) = tnot_generate(model, ids, config=TnotConfig(entropy_threshold=0.0), max_new_tokens=6)
    with torch.inference_mode():
        (inside,) = tnot_generate(model, ids, config=TnotConfig(entropy_threshold=0.0), max_new_tokens=6)
    assert inside.tokens == outside.tokens and inside.reflections == outside.reflections > 0


# -- the prompt stage -----------------------------------------------------------------------


def test_prompt_delta_lowers_the_prompt_cross_entropy_measured_by_the_model(tiny):
    model, tokenizer = tiny
    ids = _ids(tokenizer)
    (result,) = tnot_generate(model, ids, config=TnotConfig(steps=5, entropy_control=False), max_new_tokens=1)
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:])
        after = torch.nn.functional.cross_entropy(_with_delta(model, ids, result.delta)[:-1], ids[0, 1:])
    assert result.prompt_losses[0] == pytest.approx(float(before), abs=1e-4)
    assert result.prompt_losses[-1] == pytest.approx(float(after), abs=1e-4)
    assert len(result.prompt_losses) == 6
    assert all(b > a for b, a in zip(result.prompt_losses, result.prompt_losses[1:]))
    # the first token is chosen with the delta: the model's logits at the last prompt position, shifted
    with torch.no_grad():
        assert result.tokens[0] == int(_with_delta(model, ids, result.delta)[-1].argmax())


def test_adamw_settings_are_the_published_ones():
    config = TnotConfig()
    assert (config.lr, config.weight_decay, config.eps, config.entropy_weight) == (0.1, 1e-8, 1e-5, 0.1)
    assert (config.entropy_threshold, config.window, config.k, config.max_retries) == (3.0, 20, 2.0, 5)


def test_one_token_prompt_has_nothing_to_fit(llama):
    model, tokenizer = llama
    (result,) = tnot_generate(model, torch.tensor([[tokenizer.bos_token_id]]), config=TnotConfig(entropy_control=False),
                              max_new_tokens=3)
    assert len(result.tokens) == 3 and not result.prompt_losses


# -- entropy control ------------------------------------------------------------------------


def test_entropy_matches_the_definition():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    for temperature in (1.0, 0.5):
        p = torch.softmax(logits / temperature, dim=-1)
        assert float(entropy(logits, temperature)) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)
    assert float(entropy(torch.zeros(8))) == pytest.approx(math.log(8), abs=1e-6)


@pytest.mark.parametrize(
    ("recent", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 2.5 + 2 * math.sqrt(1.25)),  # std above the 0.5 floor
        ([2.0, 2.0, 2.0, 2.0], 2.0 + 2 * 0.5),  # std 0 -> 0.5
        ([0.1, 0.1, 0.1, 0.1], 1.8),  # mean + K*0.5 = 1.1 -> the 1.8 floor
        ([3.0, 5.0], 4.0 + 2 * 1.0),
    ],
)
def test_adaptive_threshold_formula(recent, expected):
    assert adaptive_threshold(recent, k=2.0, min_std=0.5, floor=1.8) == pytest.approx(expected)


def test_adaptive_threshold_waits_for_the_window_then_slides():
    monitor = EntropyMonitor(TnotConfig(adaptive=True, window=3, entropy_threshold=3.0))
    seen = []
    for value in [1.0, 2.0, 3.0, 0.5, 0.5, 0.5]:
        seen.append(monitor.threshold())
        monitor.observe(value)
    assert seen[:3] == [3.0, 3.0, 3.0]  # static until 3 entropies are seen
    assert seen[3] == pytest.approx(2.0 + 2 * math.sqrt(2 / 3))  # over [1, 2, 3]
    assert seen[4] == pytest.approx(11 / 6 + 2 * math.sqrt(114 / 108))  # the window slides: [2, 3, 0.5]
    assert seen[5] == pytest.approx(4 / 3 + 2 * math.sqrt(150 / 108))  # [3, 0.5, 0.5]


def test_threshold_zero_without_retries_ends_at_the_first_token(tiny):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    (result,) = tnot_generate(model, _ids(tokenizer), config=TnotConfig(entropy_threshold=0.0, max_retries=0),
                              max_new_tokens=16, eos_token_ids=[eos])
    assert result.tokens == [eos]
    assert result.records[0].forced_eos and result.forced_eos and result.reflections == 0


def test_retries_are_capped_then_the_response_ends(llama):
    model, tokenizer = llama
    eos = tokenizer.eos_token_id
    config = TnotConfig(entropy_threshold=0.0, max_retries=2)
    (result,) = tnot_generate(model, _ids(tokenizer), config=config, max_new_tokens=16, eos_token_ids=[eos])
    assert result.reflections == 2 and [r.reflected for r in result.records] == [True, True, False]
    assert result.tokens[-1] == eos and result.records[-1].forced_eos
    (kept,) = tnot_generate(model, _ids(tokenizer), config=TnotConfig(entropy_threshold=0.0, max_retries=2,
                            on_exhausted="continue"), max_new_tokens=16, eos_token_ids=[eos])
    assert kept.reflections == 2 and not kept.forced_eos and len(kept.tokens) == 16


def test_reflection_off_ends_at_the_first_trigger(llama):
    model, tokenizer = llama
    eos = tokenizer.eos_token_id
    (result,) = tnot_generate(model, _ids(tokenizer), config=TnotConfig(entropy_threshold=0.0, reflect=False),
                              max_new_tokens=16, eos_token_ids=[eos])
    assert result.tokens == [eos] and result.reflections == 0


# -- reflection -----------------------------------------------------------------------------


def _reference_reflection(model, context, config):
    """SRGen's reflection done the published way: re-encode the whole context, backprop through lm_head."""
    with torch.no_grad():
        hidden = model.base_model(input_ids=context).last_hidden_state[0]  # [n, D]
    weight = model.get_output_embeddings()
    delta = torch.zeros(hidden.shape[1], requires_grad=True)
    optimizer = torch.optim.AdamW([delta], lr=config.lr, weight_decay=config.weight_decay, eps=config.eps)
    w = config.entropy_weight
    for _ in range(config.steps):
        logits = weight(hidden + delta).float()
        ce = torch.nn.functional.cross_entropy(logits[:-1], context[0, 1:])
        loss = (1 - w) * ce + w * entropy(logits[-1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return weight(hidden[-1] + delta).float()


def test_reflection_at_the_first_token_equals_re_encoding_the_prompt(llama):
    model, tokenizer = llama
    ids = _ids(tokenizer)
    config = TnotConfig(steps=4, optimize_prompt=False, entropy_threshold=0.0, max_retries=1, on_exhausted="continue")
    (result,) = tnot_generate(model, ids, config=config, max_new_tokens=3)
    first = result.records[0]
    assert first.reflected and result.reflections == 1
    expected = _reference_reflection(model, ids, config)
    assert first.token == int(expected.argmax())
    assert first.entropy_after == pytest.approx(float(entropy(expected)), abs=1e-4)


def test_reflection_mid_response_equals_re_encoding_prompt_and_response(llama, monkeypatch):
    model, tokenizer = llama
    ids = _ids(tokenizer)
    base = TnotConfig(steps=3, optimize_prompt=False, entropy_control=False)
    (plain,) = tnot_generate(model, ids, config=base, max_new_tokens=8)
    # a monitor that fires at position 4 only
    from tjdkit.tnot import generate as module

    class FiresAtFour(EntropyMonitor):
        def threshold(self):
            return 0.0 if self.seen == 4 else float("inf")

    monkeypatch.setattr(module, "EntropyMonitor", FiresAtFour)
    config = TnotConfig(steps=3, optimize_prompt=False, max_retries=5)
    (result,) = tnot_generate(model, ids, config=config, max_new_tokens=8)
    assert [r.reflected for r in result.records] == [False] * 4 + [True] + [False] * 3
    assert result.tokens[:4] == plain.tokens[:4]
    context = torch.cat([ids, torch.tensor([plain.tokens[:4]])], dim=1)
    expected = _reference_reflection(model, context, config)
    assert result.tokens[4] == int(expected.argmax())
    assert result.records[4].entropy_after == pytest.approx(float(entropy(expected)), abs=1e-4)


def test_reflection_runs_no_extra_backbone_forward(llama):
    model, tokenizer = llama
    calls = []
    handle = model.base_model.register_forward_hook(lambda *_args: calls.append(1))
    try:
        (result,) = tnot_generate(model, _ids(tokenizer), config=TnotConfig(entropy_threshold=0.0, on_exhausted="continue"),
                                  max_new_tokens=10)
    finally:
        handle.remove()
    assert result.reflections == 5
    assert len(calls) == result.forwards == len(result.tokens)  # prefill + one per token after the first


def test_entropy_weight_one_lowers_the_reflected_entropy(llama):
    model, tokenizer = llama
    config = TnotConfig(entropy_threshold=0.0, entropy_weight=1.0, steps=5, max_retries=3, on_exhausted="continue")
    (result,) = tnot_generate(model, _ids(tokenizer), config=config, max_new_tokens=3)
    assert all(r.reflected and r.entropy_after < r.entropy for r in result.records)


# -- batches and state ----------------------------------------------------------------------


def test_batch_rows_equal_single_prompt_runs(llama):
    model, tokenizer = llama
    texts = [PROMPT, "Hello! How are you today?", "The capital of France is"]
    config = TnotConfig(steps=3, entropy_threshold=5.5, max_retries=2)
    eos = tokenizer.eos_token_id
    singles = [tnot_generate(model, _ids(tokenizer, text), config=config, max_new_tokens=10, eos_token_ids=[eos])[0]
               for text in texts]
    encoded = [tokenizer(text).input_ids for text in texts]
    width = max(map(len, encoded))
    ids = torch.tensor([[eos] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    batch = tnot_generate(model, ids, mask, config=config, max_new_tokens=10, eos_token_ids=[eos])
    for one, row in zip(singles, batch):
        assert row.tokens == one.tokens
        assert row.prompt_losses == pytest.approx(one.prompt_losses, abs=1e-4)
        assert [r.reflected for r in row.records] == [r.reflected for r in one.records]
        torch.testing.assert_close(row.delta, one.delta, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batch[0].delta, batch[1].delta)  # each row has its own delta


def test_no_state_leaks_between_prompts(llama):
    model, tokenizer = llama
    config = TnotConfig(steps=3, adaptive=True, window=3)
    first = tnot_generate(model, _ids(tokenizer), config=config, max_new_tokens=8)[0]
    tnot_generate(model, _ids(tokenizer, "Hello! How are you today?"), config=config, max_new_tokens=8)
    again = tnot_generate(model, _ids(tokenizer), config=config, max_new_tokens=8)[0]
    assert again.tokens == first.tokens and again.entropies == pytest.approx(first.entropies)
    assert [r.threshold for r in again.records] == pytest.approx([r.threshold for r in first.records])


def test_bad_batches_and_settings_are_one_line_errors(llama):
    model, tokenizer = llama
    ids = _ids(tokenizer)
    right_padded = torch.ones_like(ids)
    right_padded[0, -1] = 0
    with pytest.raises(TjdkitError, match="left-padded"):
        tnot_generate(model, ids, right_padded)
    with pytest.raises(TjdkitError, match="steps"):
        tnot_generate(model, ids, config=TnotConfig(steps=-1))
    with pytest.raises(TjdkitError, match="entropy_weight"):
        tnot_generate(model, ids, config=TnotConfig(entropy_weight=1.5))
    with pytest.raises(TjdkitError, match="shape"):
        tnot_generate(model, ids[0])


# -- the seeds' environment variables -------------------------------------------------------


def test_environment_variables_map_onto_the_config():
    env = {"prompt_only": "False", "times": "5", "lr": "0.05", "entropy_weight": "0.2", "entropy_control": "True",
           "entropy_threshold": "2.5", "adaptive_entropy": "true", "adaptive_entropy_N": "10",
           "adaptive_entropy_K": "1.5", "record_entropy": "True", "entropy_output_file": "trace.jsonl"}
    config = config_from_env(environ=env)
    assert (config.optimize_prompt, config.steps, config.lr, config.entropy_weight) == (False, 5, 0.05, 0.2)
    assert (config.entropy_control, config.entropy_threshold, config.adaptive) == (True, 2.5, True)
    assert (config.window, config.k, config.record_path) == (10, 1.5, "trace.jsonl")
    assert config_from_env(environ={}) == TnotConfig()
    assert config_from_env(environ={"record_entropy": "1"}).record_path == "entropy_analysis.jsonl"
    assert config_from_env(environ={"entropy_output_file": "x.jsonl"}).record_path is None  # not switched on


@pytest.mark.parametrize(("name", "value", "message"), [
    ("times", "three", "times='three' is not a valid int"),
    ("prompt_only", "maybe", "is not a boolean"),
    ("times", "-1", "steps: must be >= 0"),
])
def test_bad_environment_values_name_the_variable(name, value, message):
    with pytest.raises(TjdkitError, match=message):
        config_from_env(environ={name: value})
