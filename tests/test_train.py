"""The training loop on tiny models: heads learn, runs are written completely."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tjdkit.config import TrainRecipe
from tjdkit.errors import TjdkitError
from tjdkit.heads import build_head
from tjdkit.models import load_model
from tjdkit.recipes import from_mapping
from tjdkit.train import evaluate_nll, frequent_token_ids, load_examples, lr_factor, train


def recipe(**sections):
    base = {
        "model": {"name": "tiny-llama"},
        "head": {"name": "cp", "rank": 2, "horizon": 2, "draft_vocab": 128},
        "data": {"train_size": 64, "eval_size": 16},
        "train": {"max_steps": 24, "batch_size": 8, "lr": 3e-3, "eval_every": 12},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return from_mapping(TrainRecipe, base, "test")


def test_frozen_training_beats_the_untrained_head(tmp_path):
    r = recipe()
    model, tokenizer = load_model("tiny-llama")
    result = train(r, tmp_path / "run", model, tokenizer)
    assert result.steps == 24
    head_config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert head_config["backbone_weights"] == "base"
    trained = build_head(**head_config["head"])
    trained.load_state_dict(load_file(tmp_path / "run" / "best" / "head.safetensors"))
    untrained = build_head(**{**head_config["head"]})
    untrained.set_vocab_ids(trained.vocab_ids)
    untrained.decoder.weight.data.copy_(model.lm_head.weight[trained.vocab_ids])
    examples = load_examples(r, tokenizer, "eval")
    pad = tokenizer.pad_token_id
    trained_nll, base_nll = evaluate_nll(model, trained, examples, 2, 8, pad)
    untrained_nll, _ = evaluate_nll(model, untrained, examples, 2, 8, pad)
    assert trained_nll == pytest.approx(result.eval_nll, rel=1e-4)
    assert trained_nll < untrained_nll - 1.0  # nats per token (24 steps: ~2.9 vs ~4.9)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and "eval_nll" in lines[11] and lines[-1]["loss"] < lines[0]["loss"]
    assert (tmp_path / "run" / "recipe.yaml").read_text().startswith("command: train")
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]


def test_full_mode_trains_the_backbone_and_saves_it(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    r = recipe(backbone={"mode": "full"})
    probe = build_head("stp", hidden_size=64, vocab_size=len(tokenizer), lm_head_weight=model.lm_head.weight.detach(), init_noise=0.0)
    _, base_before = evaluate_nll(model, probe, load_examples(r, tokenizer, "eval"), 1, 8, tokenizer.pad_token_id)
    before = model.lm_head.weight.detach().clone()
    result = train(r, tmp_path / "run", model, tokenizer)
    assert not torch.equal(before, model.lm_head.weight)
    assert result.base_eval_nll < base_before - 1.0  # the backbone learned the task too
    assert result.eval_nll < base_before - 1.0
    saved = tmp_path / "run" / "last"
    assert json.loads((saved / "config.json").read_text())["backbone_weights"] == "backbone"
    reloaded, _ = load_model(str(saved / "backbone"))
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, model(ids).logits, atol=1e-5)


def test_frequent_tokens_rank_by_count_and_keep_eos():
    from tjdkit.train import Example

    examples = [Example([5, 5, 5, 7, 7, 9], 1), Example([7, 5], 1)]
    assert frequent_token_ids(examples, 2, [1]).tolist() == [1, 5]
    assert frequent_token_ids(examples, 4, [1]).tolist() == [1, 5, 7, 9]
    assert len(frequent_token_ids(examples, 6, [1])) == 6


def test_schedule_warms_up_then_decays():
    assert lr_factor(0, 4, 100) == pytest.approx(0.25)
    assert lr_factor(3, 4, 100) == pytest.approx(0.97)
    assert lr_factor(100, 0, 100) == 0.0


def test_unavailable_dataset_is_a_user_error(tmp_path):
    with pytest.raises(TjdkitError, match="not available"):
        train(recipe(data={"dataset": "gsm8k"}), tmp_path / "run")


def test_memory_efficient_batches_keep_every_hth_position_of_each_example():
    from tjdkit.train import _feature_batch

    features = [(torch.arange(5.0)[:, None], torch.arange(5)[:, None]), (torch.arange(7.0)[:, None], torch.arange(7)[:, None])]
    hidden, targets = _feature_batch(features, [0, 1], every=3, offset=1)
    assert targets.squeeze(1).tolist() == [1, 4, 1, 4]
    hidden, targets = _feature_batch(features, [0, 1], every=1, offset=0)
    assert len(targets) == 12
