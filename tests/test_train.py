"""The training loop on tiny models: heads learn, runs are complete, resume is exact."""

import json

import pytest
import torch

from tjdkit.config import TrainRecipe
from tjdkit.data.examples import Example, frequent_token_ids, load_examples, self_distill
from tjdkit.errors import TjdkitError
from tjdkit.evaluation import evaluate_nll
from tjdkit.heads import build_head
from tjdkit.models import load_model
from tjdkit.recipes import from_mapping
from tjdkit.training.runs import load_run
from tjdkit.training.heads import _feature_batch, lr_factor, train


def recipe(**sections):
    base = {
        "model": {"name": "tiny-llama"},
        "head": {"name": "cp", "rank": 2, "horizon": 2, "draft_vocab": 128},
        "data": {"train_size": 64, "eval_size": 16},
        "train": {"max_steps": 24, "batch_size": 8, "lr": 3e-3, "eval_every": 12, "save_every": 12},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return from_mapping(TrainRecipe, base, "test")


def test_frozen_training_beats_the_untrained_head(tmp_path):
    r = recipe()
    model, tokenizer = load_model("tiny-llama")
    result = train(r, tmp_path / "run", model, tokenizer)
    assert result.steps == 24
    run = load_run(tmp_path / "run")
    assert run.info["backbone_weights"] == "base" and run.info["step"] == 24
    untrained = build_head(**run.head.config())
    untrained.set_vocab_ids(run.head.vocab_ids)
    untrained.decoder.weight.data.copy_(model.lm_head.weight[run.head.vocab_ids])
    examples = load_examples(r.data, tokenizer, "eval")
    pad = tokenizer.pad_token_id
    trained_nll, base_nll = evaluate_nll(run.model, run.head, examples, 8, pad)
    untrained_nll, _ = evaluate_nll(model, untrained, examples, 8, pad)
    assert trained_nll == pytest.approx(result.eval_nll, rel=1e-4)
    assert trained_nll < untrained_nll - 1.0  # nats per token (24 steps: ~2.9 vs ~4.9)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 25))
    assert "eval_nll" in lines[11] and lines[-1]["loss"] < lines[0]["loss"]
    assert (tmp_path / "run" / "recipe.yaml").read_text().startswith("command: train")
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]


def test_full_mode_trains_the_backbone_and_the_run_loads_it_back(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    r = recipe(backbone={"mode": "full"})
    probe = build_head("stp", hidden_size=64, vocab_size=len(tokenizer), lm_head_weight=model.lm_head.weight.detach(), init_noise=0.0)
    _, base_before = evaluate_nll(model, probe, load_examples(r.data, tokenizer, "eval"), 8, tokenizer.pad_token_id)
    result = train(r, tmp_path / "run", model, tokenizer)
    assert result.base_eval_nll < base_before - 1.0  # the backbone learned the task too
    run = load_run(tmp_path / "run", "last")
    assert run.info["backbone_weights"] == "backbone.safetensors"
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(run.model(ids).logits, model(ids).logits, atol=1e-5)


def test_last_layer_mode_trains_only_the_last_block(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    first_block = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    last_block = model.model.layers[-1].self_attn.q_proj.weight.detach().clone()
    train(recipe(backbone={"mode": "last_layer"}, train={"max_steps": 4}), tmp_path / "run", model, tokenizer)
    assert torch.equal(first_block, model.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(last_block, model.model.layers[-1].self_attn.q_proj.weight)
    run = load_run(tmp_path / "run", "last")
    assert torch.equal(run.model.model.layers[-1].self_attn.q_proj.weight, model.model.layers[-1].self_attn.q_proj.weight)


def test_lora_mode_saves_an_adapter_that_loads_back(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    train(recipe(backbone={"mode": "lora", "lora_rank": 4}, train={"max_steps": 6, "lr": 1e-2}), tmp_path / "run", model, tokenizer)
    assert (tmp_path / "run" / "last" / "adapter").is_dir()
    run = load_run(tmp_path / "run", "last")
    fresh, _ = load_model("tiny-llama")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(run.model(ids).logits, fresh(ids).logits)  # the adapter changed the model
        assert torch.allclose(run.model(ids).logits, model(ids).logits, atol=1e-5)  # ... into the trained one


@pytest.mark.parametrize("mode", ["frozen", "full"])
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(tmp_path, mode):
    r = recipe(backbone={"mode": mode}, train={"max_steps": 12, "save_every": 4, "eval_every": 4, "memory_efficient_loss": True})

    class Killed(Exception):
        pass

    def kill_at_step_6(event):
        if event["kind"] == "step" and event["step"] == 6:
            raise Killed

    model, tokenizer = load_model("tiny-llama")
    with pytest.raises(Killed):
        train(r, tmp_path / "killed", model, tokenizer, on_event=kill_at_step_6)
    assert json.loads((tmp_path / "killed" / "last" / "checkpoint.json").read_text())["step"] == 4
    model, tokenizer = load_model("tiny-llama")
    resumed = train(r, tmp_path / "killed", model, tokenizer, resume=True)
    assert resumed.resumed_from == 4 and resumed.steps == 12
    model, tokenizer = load_model("tiny-llama")
    train(r, tmp_path / "straight", model, tokenizer)
    a, b = load_run(tmp_path / "killed", "last"), load_run(tmp_path / "straight", "last")
    for (name, x), (_, y) in zip(a.head.state_dict().items(), b.head.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # the steps after the checkpoint were rewritten, not duplicated


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(TjdkitError, match="nothing to resume"):
        train(recipe(), tmp_path / "empty", resume=True)


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    train(recipe(train={"max_steps": 2}), tmp_path / "run", model, tokenizer)
    (tmp_path / "run" / "last" / "head.safetensors").write_bytes(b"garbage")
    with pytest.raises(TjdkitError, match="corrupt"):
        load_run(tmp_path / "run", "last")
    (tmp_path / "run" / "last" / "trainer_state.safetensors").write_bytes(b"garbage")
    with pytest.raises(TjdkitError, match="corrupt"):
        train(recipe(train={"max_steps": 2}), tmp_path / "run", model, tokenizer, resume=True)


def test_self_distill_targets_are_the_models_own_greedy_continuations():
    model, tokenizer = load_model("tiny-llama")
    examples = load_examples(recipe().data, tokenizer, "eval")[:3]
    distilled = self_distill(model, tokenizer, examples, batch_size=2)
    for original, new in zip(examples, distilled):
        prompt = original.input_ids[: original.prompt_length]
        assert new.input_ids[: new.prompt_length] == prompt
        budget = len(original.input_ids) - original.prompt_length
        ids = torch.tensor([prompt])
        with torch.no_grad():
            expected = model.generate(ids, max_new_tokens=budget, do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        assert new.input_ids == expected[0].tolist()[: len(new.input_ids)]
        assert len(new.input_ids) <= len(original.input_ids)


def test_self_distill_runs_to_new_tokens_within_max_length_and_generates_each_prompt_once():
    model, tokenizer = load_model("tiny-llama")
    example = load_examples(recipe().data, tokenizer, "eval")[0]
    calls = []
    original_generate = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original_generate(*args, **kwargs)

    model.generate = counting_generate
    length = example.prompt_length + 30
    distilled = self_distill(model, tokenizer, [example] * 5, batch_size=4, new_tokens=50, max_length=length)
    assert calls == [1]  # five copies of one prompt: one row generated
    ids = torch.tensor([example.input_ids[: example.prompt_length]])
    with torch.no_grad():
        expected = original_generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    for new in distilled:
        assert new.input_ids == expected[0].tolist() and len(new.input_ids) <= length


def test_distilled_continuations_are_kept_so_a_grown_run_generates_only_new_prompts(tmp_path):
    """Self-distilling with a store: a second run over more prompts generates only the new ones, and every
    example equals what a run without the store writes (the model's own greedy continuation)."""
    from tjdkit.data.distilled import ContinuationStore

    model, tokenizer = load_model("tiny-llama")
    prompts = [tokenizer(text).input_ids for text in ("one two", "three four five", "six", "seven eight")]
    examples = [Example(prompt + [3, 4], len(prompt)) for prompt in prompts]
    calls = []
    original_generate = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original_generate(*args, **kwargs)

    fresh = self_distill(model, tokenizer, examples, batch_size=1, new_tokens=12)
    model.generate = counting_generate
    store = ContinuationStore.for_writer(tmp_path, model, tokenizer.eos_token_id)
    assert self_distill(model, tokenizer, examples[:2], batch_size=1, new_tokens=12, store=store) == fresh[:2]
    assert calls == [1, 1]
    reopened = ContinuationStore.for_writer(tmp_path, model, tokenizer.eos_token_id)  # the next run reads the disk
    progress = []
    grown = self_distill(model, tokenizer, examples, batch_size=1, new_tokens=12, store=reopened,
                         on_progress=lambda done, total: progress.append((done, total)))
    assert grown == fresh and calls == [1, 1, 1, 1] and progress == [(2, 4), (3, 4), (4, 4)]
    shorter = self_distill(model, tokenizer, examples, batch_size=1, new_tokens=5, store=reopened)
    assert calls == [1, 1, 1, 1]  # a prefix of a greedy continuation is the shorter one
    assert shorter == self_distill(model, tokenizer, examples, batch_size=4, new_tokens=5)
    calls.clear()
    self_distill(model, tokenizer, examples, batch_size=4, new_tokens=20, store=reopened)
    ended = sum(tokenizer.eos_token_id in example.input_ids[example.prompt_length :] for example in fresh)
    assert calls == ([4 - ended] if ended < 4 else [])  # more room: only continuations that had not ended


def test_a_second_self_distilled_run_reuses_the_first_runs_continuations(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    distilled = recipe(data={"self_distill": True, "distill_tokens": 8}, train={"max_steps": 1})
    train(distilled, tmp_path / "first", model, tokenizer)
    calls = []
    original_generate = model.generate
    model.generate = lambda *args, **kwargs: calls.append(1) or original_generate(*args, **kwargs)
    train(distilled, tmp_path / "second", model, tokenizer)
    assert calls == []


def test_the_continuation_store_belongs_to_one_set_of_weights_and_survives_bad_shards(tmp_path):
    import json

    from tjdkit.data.distilled import ContinuationStore, weights_fingerprint
    from tjdkit.models.quantize import weights_copy

    model, _ = load_model("tiny-llama")
    other, _ = load_model("tiny-llama")
    assert weights_fingerprint(other) == weights_fingerprint(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)  # a fine-tune
    assert weights_fingerprint(other) != weights_fingerprint(model)
    assert weights_fingerprint(weights_copy(model, "fp16-weights")) != weights_fingerprint(model)

    store = ContinuationStore(tmp_path, eos=2)
    store.put([((5, 6), 3, [7, 8, 9]), ((5, 7), 4, [1, 2])])
    (tmp_path / "broken.json").write_text('{"format": 1, "entries": [[')
    (tmp_path / "odd.json").write_text(json.dumps({"format": 1, "entries": [["x", "3", [1]], 7]}))
    again = ContinuationStore(tmp_path, eos=2)
    assert again.get((5, 6), 2) == [7, 8] and again.get((5, 6), 4) is None  # generated with room 3 only
    assert again.get((5, 7), 10) == [1, 2]  # ended at end-of-sequence: serves any room
    assert again.get((9,), 1) is None and len(again.entries) == 2


def test_frequent_tokens_rank_by_count_and_keep_eos():
    examples = [Example([5, 5, 5, 7, 7, 9], 1), Example([7, 5], 1)]
    assert frequent_token_ids(examples, 2, [1]).tolist() == [1, 5]
    assert frequent_token_ids(examples, 4, [1]).tolist() == [1, 5, 7, 9]
    assert len(frequent_token_ids(examples, 6, [1])) == 6


def test_schedule_warms_up_then_decays():
    assert lr_factor(0, 4, 100) == pytest.approx(0.25)
    assert lr_factor(3, 4, 100) == pytest.approx(0.97)
    assert lr_factor(100, 0, 100) == 0.0


def test_memory_efficient_batches_keep_every_hth_position_of_each_example():
    features = [(torch.arange(5.0)[:, None], torch.arange(5)[:, None]), (torch.arange(7.0)[:, None], torch.arange(7)[:, None])]
    _, targets = _feature_batch(features, [0, 1], every=3, offset=1)
    assert targets.squeeze(1).tolist() == [1, 4, 1, 4]
    _, targets = _feature_batch(features, [0, 1], every=1, offset=0)
    assert len(targets) == 12


@pytest.mark.parametrize("dataset", ["stemp", "sharegpt"])
def test_examples_start_with_exactly_one_bos(dataset):
    from tjdkit.config import DataSection

    _, tokenizer = load_model("tiny-llama")
    examples = load_examples(DataSection(dataset=dataset, train_size=3, max_length=64), tokenizer, "train")
    for example in examples:
        assert example.input_ids[0] == tokenizer.bos_token_id != example.input_ids[1]
        assert 0 < example.prompt_length <= len(example.input_ids) <= 64


def test_an_eval_set_the_draft_vocabulary_cannot_score_trains_without_a_crash(tmp_path):
    """Few examples make a small draft vocabulary: no eval window may lie wholly inside it. The eval
    NLL is then infinite (no best checkpoint), not a traceback."""
    model, tokenizer = load_model("tiny-llama")
    head = build_head("cp", hidden_size=64, vocab_size=len(tokenizer), rank=2, horizon=2, draft_vocab=torch.tensor([5, 6]))
    examples = load_examples(recipe().data, tokenizer, "eval")
    assert evaluate_nll(model, head, examples, 8, tokenizer.pad_token_id) == (float("inf"), float("inf"))
    result = train(recipe(head={"draft_vocab": 2}, data={"train_size": 4, "eval_size": 4}, train={"max_steps": 2}), tmp_path / "run", model, tokenizer)
    assert result.steps == 2 and (tmp_path / "run" / "last").is_dir()
