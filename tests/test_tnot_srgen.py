"""SRGen mode against SRGen's published rules (2020-qqtcg/SRGen: SRGen/tnot_decorator.py and
SRGen/base_evaluator.py), re-done by brute force in this file: `SrgenReference` keeps SRGen's
model state (delta, entropy_history, high_entropy_detected, prompt_only) and runs its evaluator
loop as separate generate calls, each token from a full no-cache forward of the whole context.
The one planned difference: the context is kept as token ids (SRGen decodes and re-tokenises it
at a retry), so the reference drops only the forced EOS where SRGen drops special tokens.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from tjdkit.errors import TjdkitError
from tjdkit.models import load_model
from tjdkit.tnot import TnotConfig, attach_tnot, config_from_env, tnot_generate
from tjdkit.tnot.srgen import srgen_threshold

PROMPT = "[QUESTION]\nWhat is 20°C in Fahrenheit?\n[ANSWER]"
# Every variable SRGen's decorator or evaluator reads: cleared before each test.
SRGEN_VARIABLES = (
    "times", "lr", "entropy_weight", "temperature", "entropy_control", "use_entropy_control", "entropy_threshold",
    "adaptive_entropy", "adaptive_entropy_N", "adaptive_entropy_K", "minimal_std", "minimal_threshold",
    "max_retries", "prompt_only", "record_entropy", "entropy_output_file",
)
# SRGen's `temperature` (of the entropies only; decoding stays greedy). At 1 the tiny random models'
# entropies are all 6.22 nats; at 0.03 they spread over 0 to 2.4, so thresholds pick positions.
SPREAD = "0.03"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in SRGEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma3"])
def tiny(request):
    return load_model(request.param)


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


def _prompt(tokenizer) -> list[int]:
    return tokenizer(PROMPT).input_ids


# -- SRGen, re-done from its published rules --------------------------------------------------


def _srgen_entropy(logits, temperature):
    """-sum p log(p + 1e-10), p = softmax(logits / T) (tnot_decorator.py: apply_entropy_control)."""
    p = torch.softmax(logits / temperature, dim=-1)
    return -(p * torch.log(p + 1e-10)).sum(-1)


class SrgenReference:
    """SRGen's decorated model and its evaluator, one sample at a time, greedy."""

    def __init__(self, model, env: dict, eos: int):
        self.model, self.env, self.eos = model, dict(env), eos
        self.head = model.get_output_embeddings()
        self.checks: list[tuple[int, float, float, bool]] = []  # (response position, entropy, threshold, triggered)
        self.reflections = 0
        self.prompt_delta = None

    def var(self, name, default):
        return self.env.get(name, default)

    # the decorator: one forward, SRGen's prompt stage or generation stage
    def next_token(self, context: list[int], position: int) -> int:
        ids = torch.tensor([context])
        with torch.no_grad():
            hidden = self.model.base_model(input_ids=ids).last_hidden_state  # [1, n, D], no cache
        if self.prompt_only:  # prompt stage: fit a delta; no entropy check in this stage
            self.prompt_only = False
            hidden = self.prompt_stage(hidden, ids)
            with torch.no_grad():
                return int(self.head(hidden[0, -1]).argmax())
        with torch.no_grad():
            logits = self.head(hidden[0, -1])  # the stored delta is not applied
        if self.var("entropy_control", "False") == "True":
            value = _srgen_entropy(logits, float(self.var("temperature", "1.0")))
            threshold = self.threshold()
            self.history.append(value.item())
            self.checks.append((position, value.item(), threshold, bool(value > threshold)))
            if value > threshold:
                self.detected = True
                return self.eos  # logits forced to EOS
        return int(logits.argmax())

    def threshold(self) -> float:
        threshold = float(self.var("entropy_threshold", "3.0"))
        if self.var("adaptive_entropy", "False") == "True":
            n = int(self.var("adaptive_entropy_N", "20"))
            k = float(self.var("adaptive_entropy_K", "2"))
            if len(self.history) + 1 > n:
                window = torch.tensor(self.history[-n:])
                std = max(torch.std(window), float(self.var("minimal_std", "0.5")))  # unbiased std
                threshold = max((torch.mean(window) + k * std).item(), float(self.var("minimal_threshold", "1.8")))
        return threshold

    def prompt_stage(self, hidden, ids):
        """delta_normal (CE) when no delta exists, else delta_high (CE + entropy), applied to this forward only."""
        times, lr = int(self.var("times", 1)), float(self.var("lr", 0.1))
        w, temperature = float(self.var("entropy_weight", "0.1")), float(self.var("temperature", "1.0"))
        delta = torch.nn.Parameter(torch.zeros(1, 1, hidden.shape[-1]))
        optimizer = torch.optim.AdamW([delta], lr=lr, weight_decay=1e-8, eps=1e-5)
        with torch.enable_grad():
            for _ in range(times):
                optimizer.zero_grad()
                logits = self.head(hidden + delta)  # [1, n, V]
                ce = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
                loss = ce if self.delta is None else (1 - w) * ce + w * _srgen_entropy(logits[0, -1], temperature)
                loss.backward()
                optimizer.step()
        if self.delta is None:
            self.delta = self.prompt_delta = delta.detach().clone()
            return hidden
        self.reflections += 1
        return hidden + delta.detach()

    def generate(self, context: list[int], max_new_tokens: int) -> list[int]:
        """model.generate(): greedy until EOS or max_new_tokens."""
        new: list[int] = []
        while len(new) < max_new_tokens:
            new.append(self.next_token(context + new, len(context) - self.prompt_length + len(new)))
            if new[-1] == self.eos:
                break
        return new

    # the evaluator: one sample
    def run(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        self.delta, self.history, self.detected, self.prompt_length = None, [], False, len(prompt)
        starts_with_prompt_stage = self.var("prompt_only", "True") == "True"  # the evaluator sets it; a caller may not
        if self.var("use_entropy_control", "False") != "True":
            self.prompt_only = starts_with_prompt_stage
            return self.generate(prompt, max_new_tokens)
        self.env["entropy_control"] = "True"
        response, retries, max_retries = [], 0, int(self.var("max_retries", "5"))
        while retries < max_retries:
            self.detected, self.prompt_only = False, retries > 0 or starts_with_prompt_stage
            part = self.generate(prompt + response, max_new_tokens)
            if not self.detected:
                return response + part
            response += part[:-1]  # the forced EOS is dropped
            retries += 1
        self.env["entropy_control"], self.prompt_only, self.detected = "False", False, False
        return response + self.generate(prompt + response, max_new_tokens)


def _run_both(model, tokenizer, env: dict, monkeypatch, max_new_tokens=10):
    for name in SRGEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = config_from_env(srgen=True)
    prompt = _prompt(tokenizer)
    (result,) = tnot_generate(model, torch.tensor([prompt]), config=config, max_new_tokens=max_new_tokens,
                              eos_token_ids=[tokenizer.eos_token_id])
    reference = SrgenReference(model, env, tokenizer.eos_token_id)
    expected = reference.run(prompt, max_new_tokens)
    return result, reference, expected


def _assert_same(result, reference, expected):
    assert result.tokens == expected
    checked = [(r.position, r.entropy, r.threshold) for r in result.records if r.threshold is not None]
    assert [c[0] for c in checked] == [c[0] for c in reference.checks]  # the same positions checked
    for (_, entropy, threshold), (_, entropy_ref, threshold_ref, _) in zip(checked, reference.checks):
        assert entropy == pytest.approx(entropy_ref, abs=1e-4) and threshold == pytest.approx(threshold_ref, abs=1e-4)
    triggered = [position for position, _, _, fired in reference.checks if fired]
    assert [r.position for r in result.records if r.before is not None] == triggered  # the same trigger positions
    assert result.reflections == reference.reflections


# -- the rules, against the reference ---------------------------------------------------------

SCENARIOS = {
    "retry loop": dict(use_entropy_control="True", entropy_threshold="1.5", times="3", lr="1.0", max_retries="5"),
    "adaptive": dict(use_entropy_control="True", adaptive_entropy="True", adaptive_entropy_N="4", adaptive_entropy_K="1",
                     minimal_std="0.1", minimal_threshold="0.5", times="2", lr="0.5", max_retries="4"),
    "decorator alone": dict(entropy_control="True", entropy_threshold="1.5", times="2"),
    "no control": dict(times="3", lr="0.5"),
    "no prompt stage": dict(use_entropy_control="True", prompt_only="False", entropy_threshold="1.5", times="2",
                            lr="1.0", max_retries="3"),
}


# On tiny-llama the scenarios are not vacuous: (triggers, reflections, forced end) as seen there.
ON_LLAMA = {"retry loop": (5, 4, False), "decorator alone": (1, 0, True), "no control": (0, 0, False)}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_srgen_mode_follows_the_published_rules(tiny, clean_env, scenario):
    model, tokenizer = tiny
    env = {"temperature": SPREAD, **SCENARIOS[scenario]}
    result, reference, expected = _run_both(model, tokenizer, env, clean_env, max_new_tokens=10)
    _assert_same(result, reference, expected)
    assert result.forced_eos == (scenario == "decorator alone" and reference.detected)
    if scenario != "no prompt stage":
        assert result.records[0].threshold is None  # the first token is never checked
    if type(model).__name__.startswith("Llama"):
        seen = (sum(r.before is not None for r in result.records), result.reflections, result.forced_eos)
        if scenario in ON_LLAMA:
            assert seen == ON_LLAMA[scenario]
        else:  # adaptive: the window's threshold fires; no prompt stage: the first token is checked
            assert seen[0] >= 1 and (scenario != "adaptive" or result.reflections >= 1)
            assert scenario != "no prompt stage" or result.records[0].threshold == 1.5


def test_first_token_and_first_token_after_a_retry_are_never_checked(tiny, clean_env):
    """Threshold 0: every checked token triggers. SRGen still keeps the first token, and each
    trigger at p is re-chosen at p unchecked, so the triggers are at 1, 2, 3, 4, 5 exactly."""
    model, tokenizer = tiny
    env = {"use_entropy_control": "True", "entropy_threshold": "0", "max_retries": "5", "times": "2"}
    result, reference, expected = _run_both(model, tokenizer, env, clean_env, max_new_tokens=6)
    _assert_same(result, reference, expected)
    assert [r.position for r in result.records if r.before is not None] == [1, 2, 3, 4, 5]
    assert result.records[0].threshold is None and result.tokens[0] != tokenizer.eos_token_id
    # tjdkit's own mode checks the first token too
    (own,) = tnot_generate(model, torch.tensor([_prompt(tokenizer)]), config=TnotConfig(entropy_threshold=0.0, steps=2),
                           max_new_tokens=6, eos_token_ids=[tokenizer.eos_token_id])
    assert own.records[0].threshold == 0.0 and own.records[0].reflected


def test_max_retries_five_gives_four_reflections_then_plain_decoding(tiny, clean_env):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    env = {"use_entropy_control": "True", "entropy_threshold": "0", "max_retries": "5", "times": "2", "lr": "1.0"}
    result, reference, expected = _run_both(model, tokenizer, env, clean_env, max_new_tokens=6)
    _assert_same(result, reference, expected)
    assert result.reflections == 4 and [r.reflected for r in result.records[:6]] == [False, True, True, True, True, False]
    assert any(r.token != r.before for r in result.records if r.reflected)  # the reflection's delta is applied
    assert result.records[5].before is not None and not result.forced_eos
    # after the 5th trigger: the model's own greedy decoding from there, entropy control off,
    # with a fresh budget of max_new_tokens (the evaluator's last generate call)
    prompt = _prompt(tokenizer)
    context = torch.tensor([prompt + result.tokens[:5]])
    plain = model.generate(context, attention_mask=torch.ones_like(context), max_new_tokens=6, do_sample=False,
                           eos_token_id=eos, pad_token_id=eos)[0, context.shape[1]:].tolist()
    assert result.tokens[5:] == plain
    assert all(r.threshold is None for r in result.records[6:])
    if eos not in plain:
        assert len(result.tokens) == 5 + 6  # 5 triggered segments of one kept token, then a full budget
    # tjdkit's own mode: 5 reflections, then the trigger ends the response with EOS
    (own,) = tnot_generate(model, torch.tensor([prompt]), config=TnotConfig(entropy_threshold=0.0, steps=2, lr=1.0),
                           max_new_tokens=6, eos_token_ids=[eos])
    assert own.reflections == 5 and own.forced_eos and own.tokens[-1] == eos


def test_zero_and_one_retries(llama, clean_env):
    """max_retries 0: SRGen's loop never runs: one plain generate without a prompt stage.
    max_retries 1: the first trigger is re-chosen plainly, no reflection, control off after it."""
    model, tokenizer = llama
    base = {"use_entropy_control": "True", "entropy_threshold": "0", "times": "2"}
    none, reference, expected = _run_both(model, tokenizer, {**base, "max_retries": "0"}, clean_env)
    _assert_same(none, reference, expected)
    assert none.delta is None and not none.prompt_losses and all(r.threshold is None for r in none.records)
    one, reference, expected = _run_both(model, tokenizer, {**base, "max_retries": "1"}, clean_env)
    _assert_same(one, reference, expected)
    assert one.reflections == 0 and [r.position for r in one.records if r.before is not None] == [1]
    assert one.tokens[: len(none.tokens)] == none.tokens  # re-chosen plainly: the model's own greedy tokens


# -- the adaptive threshold -------------------------------------------------------------------


def _adaptive(**changes) -> TnotConfig:
    settings = dict(mode="srgen", adaptive=True, window=4, k=2.0, min_std=0.5, floor=1.8, entropy_threshold=3.0)
    return TnotConfig(**{**settings, **changes})


def test_adaptive_threshold_uses_the_unbiased_std_with_minimal_std_and_threshold():
    # [1, 2, 3, 4]: mean 2.5, unbiased std sqrt(5/3) = 1.2910 -> 2.5 + 2 * 1.2910 = 5.0820
    # (tjdkit's population std, sqrt(1.25) = 1.1180, would give 4.7361)
    assert srgen_threshold([1.0, 2.0, 3.0, 4.0], _adaptive()) == pytest.approx(2.5 + 2 * math.sqrt(5 / 3), abs=1e-6)
    assert math.sqrt(5 / 3) == pytest.approx(statistics.stdev([1, 2, 3, 4]))
    assert srgen_threshold([9.0, 1.0, 2.0, 3.0, 4.0], _adaptive()) == pytest.approx(5.0819889, abs=1e-6)  # last 4
    assert srgen_threshold([1.0, 2.0, 3.0], _adaptive()) == 3.0  # fewer than N checked: the static threshold
    assert srgen_threshold([2.0, 2.0, 2.0, 2.0], _adaptive()) == pytest.approx(3.0)  # std 0 -> minimal_std 0.5
    assert srgen_threshold([2.0, 2.5, 2.0, 2.5], _adaptive(min_std=0.8)) == pytest.approx(2.25 + 1.6)  # std 0.2887 -> 0.8
    assert srgen_threshold([0.1] * 4, _adaptive()) == pytest.approx(1.8)  # 1.1 -> minimal_threshold
    assert srgen_threshold([0.1] * 4, _adaptive(floor=0.5)) == pytest.approx(1.1)
    # N = 1: the unbiased std of one value is NaN and Python's max keeps it: nothing ever triggers
    assert math.isnan(srgen_threshold([5.0], _adaptive(window=1)))


def test_adaptive_history_spans_the_segments_and_keeps_triggering_entropies(llama, clean_env):
    model, tokenizer = llama
    env = {"temperature": SPREAD, "use_entropy_control": "True", "adaptive_entropy": "True", "adaptive_entropy_N": "3",
           "adaptive_entropy_K": "0.5", "minimal_std": "0.05", "minimal_threshold": "0.2", "times": "1", "max_retries": "3"}
    result, reference, expected = _run_both(model, tokenizer, env, clean_env, max_new_tokens=12)
    _assert_same(result, reference, expected)
    checked = [r for r in result.records if r.threshold is not None]
    entropies = [r.entropy for r in checked]
    for i, record in enumerate(checked):  # each threshold by hand from the entropies checked before it
        if i < 3:
            assert record.threshold == 3.0
        else:
            window = entropies[i - 3 : i]
            by_hand = max(statistics.mean(window) + 0.5 * max(statistics.stdev(window), 0.05), 0.2)
            assert record.threshold == pytest.approx(by_hand, abs=1e-5)
    assert result.reflections >= 1


# -- the prompt delta -------------------------------------------------------------------------


def test_prompt_delta_is_fitted_but_never_applied(tiny, clean_env):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    clean_env.setenv("times", "5")
    prompt = torch.tensor([_prompt(tokenizer)])
    (result,) = tnot_generate(model, prompt, config=config_from_env(srgen=True), max_new_tokens=12, eos_token_ids=[eos])
    greedy = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                            eos_token_id=eos, pad_token_id=eos)[0, prompt.shape[1]:].tolist()
    assert result.tokens == greedy
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(input_ids=prompt).logits[0, :-1].float(), prompt[0, 1:])
    assert len(result.prompt_losses) == 6 and result.prompt_losses[0] == pytest.approx(float(ce), abs=1e-4)
    assert result.prompt_losses[-1] < result.prompt_losses[0] and float(result.delta.abs().sum()) > 0
    reference = SrgenReference(model, {"times": "5"}, eos)
    assert reference.run(prompt[0].tolist(), 12) == greedy
    torch.testing.assert_close(result.delta, reference.prompt_delta.flatten(), atol=1e-5, rtol=1e-4)


# -- the decorator reads the environment at every call ----------------------------------------


@pytest.fixture
def env_model():
    """A fresh model each time: attach_tnot changes its class."""
    model, tokenizer = load_model("tiny-llama")
    return attach_tnot(model), tokenizer


def test_environment_changes_between_generate_calls_take_effect(env_model, clean_env):
    model, tokenizer = env_model
    eos = tokenizer.eos_token_id
    prompt = torch.tensor([_prompt(tokenizer)])

    def generate():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos)[0, prompt.shape[1]:].tolist()

    assert model.tnot_config.mode == "srgen" and model.tnot_config.steps == 1 and not model.tnot_config.entropy_control
    plain = generate()
    assert plain == model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                                   eos_token_id=eos, pad_token_id=eos, tnot=False)[0, prompt.shape[1]:].tolist()
    env = {"use_entropy_control": "True", "entropy_threshold": "0", "max_retries": "2", "times": "2", "lr": "1.0"}
    for name, value in env.items():
        clean_env.setenv(name, value)
    second = generate()
    (result,) = model.tnot_results
    assert model.tnot_config.max_retries == 2 and model.tnot_config.steps == 2
    assert result.reflections == 1 and [r.position for r in result.records if r.before is not None] == [1, 2]
    assert second == SrgenReference(model, env, eos).run(prompt[0].tolist(), 8)
    assert not model.high_entropy_detected  # as SRGen's flag after its loop
    # the decorator alone: entropy_control without the evaluator's loop ends at the first trigger
    clean_env.delenv("use_entropy_control")
    clean_env.setenv("entropy_control", "True")
    third = generate()
    assert third == plain[:1] + [eos] and model.high_entropy_detected and model.high_entropy_position == 1
    # an explicit config stays as given whatever the environment says
    model.tnot_config = TnotConfig(mode="srgen", steps=0, entropy_control=False)
    clean_env.setenv("entropy_threshold", "0")
    assert generate() == plain and model.tnot_config.steps == 0


def test_srgen_evaluator_loop_over_the_decorator_ends_after_one_call(env_model, clean_env):
    """SRGen's own evaluator, driving this model: it stops after one generate call (the whole loop
    ran inside it) with the completion SRGen computes."""
    model, tokenizer = env_model
    eos = tokenizer.eos_token_id
    env = {"temperature": SPREAD, "use_entropy_control": "True", "entropy_threshold": "1.5", "max_retries": "5",
           "times": "2", "lr": "1.0"}
    for name, value in env.items():
        clean_env.setenv(name, value)
    prompt = _prompt(tokenizer)
    calls, completion, retries, context = 0, [], 0, torch.tensor([prompt])
    clean_env.setenv("entropy_control", "True")
    while retries < 5:  # base_evaluator.generate_with_entropy_control, with ids instead of text
        model.reset_entropy_detection()
        out = model.generate(context, attention_mask=torch.ones_like(context), max_new_tokens=10, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos)
        calls += 1
        part = out[0, context.shape[1]:].tolist()
        if not model.high_entropy_detected:
            completion += part
            break
        completion += part[:-1]
        context, retries = torch.cat([context, torch.tensor([part[:-1]])], dim=1), retries + 1
    clean_env.setenv("entropy_control", "False")
    assert calls == 1 and model.tnot_results[0].reflections == 4
    assert completion == SrgenReference(model, env, eos).run(prompt, 10)


# -- the environment's variables --------------------------------------------------------------


def test_srgen_environment_variables():
    config = config_from_env(srgen=True, environ={})
    assert config.mode == "srgen" and (config.steps, config.entropy_control, config.max_retries) == (1, False, 5)
    assert (config.lr, config.entropy_threshold, config.min_std, config.floor, config.window, config.k) == (0.1, 3.0, 0.5, 1.8, 20, 2.0)
    env = {"minimal_std": "0.25", "minimal_threshold": "1.2", "max_retries": "20", "use_entropy_control": "True"}
    config = config_from_env(srgen=True, environ=env)
    assert (config.min_std, config.floor, config.max_retries, config.entropy_control, config.reflect) == (0.25, 1.2, 20, True, True)
    alone = config_from_env(srgen=True, environ={"entropy_control": "True"})
    assert alone.entropy_control and not alone.reflect
    assert config_from_env(environ=env).mode == "tjdkit" and config_from_env(environ=env).max_retries == 20
    assert config_from_env(environ={}) == TnotConfig()  # tjdkit's own defaults are unchanged
    with pytest.raises(TjdkitError, match="max_retries='many' is not a valid int"):
        config_from_env(srgen=True, environ={"max_retries": "many"})
    with pytest.raises(TjdkitError, match="use_entropy_control='sure' is not a boolean"):
        config_from_env(srgen=True, environ={"use_entropy_control": "sure"})


def test_batch_rows_are_independent_samples(llama, clean_env):
    model, tokenizer = llama
    eos = tokenizer.eos_token_id
    clean_env.setenv("temperature", SPREAD)
    config = config_from_env(srgen=True, environ={"use_entropy_control": "True", "entropy_threshold": "1.5",
                                                 "times": "2", "lr": "1.0", "max_retries": "3"})
    texts = [PROMPT, "Hello! How are you today?"]
    singles = [tnot_generate(model, torch.tensor([tokenizer(t).input_ids]), config=config, max_new_tokens=8,
                             eos_token_ids=[eos])[0] for t in texts]
    encoded = [tokenizer(t).input_ids for t in texts]
    width = max(map(len, encoded))
    ids = torch.tensor([[eos] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    batch = tnot_generate(model, ids, mask, config=config, max_new_tokens=8, eos_token_ids=[eos])
    assert [row.tokens for row in batch] == [one.tokens for one in singles]
    assert [row.reflections for row in batch] == [one.reflections for one in singles]
