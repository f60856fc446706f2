"""Hyformer against independent truths: masks by perturbation, cached against uncached
generation, losses against hand-written formulas, save/load against the saved model."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from tjdkit.models.hyformer import (
    Hyformer,
    HyformerConfig,
    KVCache,
    ModelInput,
    PredictionHead,
    compute_lm_loss,
    compute_mlm_loss,
    compute_prediction_loss,
)

V, PAD, EOS, TASK = 40, 0, 2, 4


def small_config(**overrides) -> HyformerConfig:
    fields = dict(vocab_size=V, d_model=32, n_heads=4, n_layers=2, max_seq_len=64, pad_token_id=PAD, eos_token_id=EOS)
    return HyformerConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def model() -> Hyformer:
    torch.manual_seed(0)
    return Hyformer(small_config(num_prediction_tasks=3, prediction_task_type="regression")).eval()


def random_ids(batch=2, length=12, seed=0) -> torch.Tensor:
    return torch.randint(5, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- attention modes ------------------------------------------------------------------------


def test_a_later_token_changes_earlier_positions_only_when_bidirectional(model):
    ids = random_ids()
    changed = ids.clone()
    changed[:, 8] = (changed[:, 8] - 5 + 1) % (V - 5) + 5
    with torch.no_grad():
        lm_a, lm_b = model(ids, task="lm").logits, model(changed, task="lm").logits
        mlm_a, mlm_b = model(ids, task="mlm").logits, model(changed, task="mlm").logits
        pred_a, pred_b = model(ids, task="prediction").logits, model(changed, task="prediction").logits
    assert torch.equal(lm_a[:, :8], lm_b[:, :8])  # causal: exactly unchanged
    assert not torch.allclose(lm_a[:, 8:], lm_b[:, 8:])
    for position in range(8):  # bidirectional: every earlier position sees it
        assert (mlm_a[:, position] - mlm_b[:, position]).abs().max() > 1e-6
    assert (pred_a - pred_b).abs().max() > 1e-6  # the pooled first token sees it too


def test_padding_does_not_change_real_positions(model):
    ids = random_ids(batch=1, length=9)
    padded = torch.cat([ids, torch.full((1, 4), PAD)], dim=1)
    mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        for task in ("lm", "mlm"):
            alone = model(ids, task=task).logits
            with_pad = model(padded, task=task, attention_mask=mask).logits[:, :9]
            torch.testing.assert_close(with_pad, alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.predict(padded, mask), model.predict(ids), atol=1e-5, rtol=1e-5)
        left = torch.cat([torch.full((1, 4), PAD), ids], dim=1)  # RoPE is relative: left padding shifts nothing
        left_mask = mask.flip(1)
        torch.testing.assert_close(model(left, attention_mask=left_mask).logits[:, 4:], model(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.isnan(model(left, attention_mask=left_mask).logits).any()


def test_mean_pooling_reads_real_tokens_only():
    torch.manual_seed(1)
    model = Hyformer(small_config(num_prediction_tasks=1, pooling="mean")).eval()
    ids = random_ids(batch=1, length=6)
    padded = torch.cat([ids, torch.full((1, 3), PAD)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    torch.testing.assert_close(model.predict(padded, mask), model.predict(ids), atol=1e-5, rtol=1e-5)


# -- caches and generation ------------------------------------------------------------------


def test_token_by_token_with_kv_caches_equals_one_full_forward(model):
    ids = random_ids(batch=2, length=10)
    caches = [None] * len(model.blocks)  # the seed's way to start
    rows = []
    with torch.no_grad():
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], task="lm", kv_caches=caches, use_cache=True)
            caches = out.extras["kv_caches"]
            rows.append(out.logits)
        full = model(ids, task="lm").logits
    assert all(isinstance(cache, KVCache) and cache.length == 10 for cache in caches)
    torch.testing.assert_close(torch.cat(rows, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, None, None), (1.0, None, None), (0.8, 10, 0.9)])
def test_cached_generation_equals_uncached(temperature, top_k, top_p):
    torch.manual_seed(2)
    model = Hyformer(small_config()).eval()
    prefix = torch.full((6, 1), TASK)
    kwargs = dict(max_new_tokens=30, temperature=temperature, top_k=top_k, top_p=top_p, eos=EOS, seed=11)
    cached = model.generate(prefix, **kwargs)
    uncached = model.generate(prefix, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert torch.equal(model.generate(prefix, **kwargs), cached)  # the same seed, the same molecules
    assert cached.shape[0] == 6 and cached.shape[1] <= 31 and torch.equal(cached[:, 0], prefix[:, 0])


def test_rows_stop_at_their_own_eos_and_pad_after():
    torch.manual_seed(3)
    model = Hyformer(small_config()).eval()
    with torch.no_grad():
        model.lm_head.weight[EOS] += 0.0  # tied: keep the model as built
    out = model.generate(torch.full((16, 1), TASK), max_new_tokens=40, temperature=1.5, eos=EOS, seed=0)
    for row in out.tolist():
        if EOS in row:
            assert all(token == PAD for token in row[row.index(EOS) + 1 :])
    assert out.shape[1] <= 41


def test_greedy_generate_equals_transformers_and_tjdkit_decoding(model):
    from tjdkit.decoding import generate as tjdkit_generate

    prefix = torch.tensor([[TASK, 7, 9]])
    ours = model.generate(prefix, max_new_tokens=20, temperature=0, eos=EOS)
    hf = model.generate(input_ids=prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=20, do_sample=False,
                        eos_token_id=EOS, pad_token_id=PAD)
    tokens, _ = tjdkit_generate(model, prefix, mode="ar", max_new_tokens=20, eos_token_ids=[EOS])
    assert ours[0, 3:].tolist()[: len(tokens)] == tokens
    assert hf[0].tolist()[: ours.shape[1]] == ours[0].tolist()[: hf.shape[1]]


def test_generation_stops_at_max_seq_len():
    model = Hyformer(small_config(max_seq_len=16)).eval()
    out = model.generate(torch.full((2, 1), TASK), max_new_tokens=100, temperature=0, eos=[])
    assert out.shape == (2, 16)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.full((1, 17), TASK))


# -- losses ---------------------------------------------------------------------------------


def _nll(logits, targets):
    return -torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1)


def test_lm_loss_is_the_mean_next_token_nll_over_labelled_positions():
    logits = torch.randn(2, 5, V)
    labels = torch.randint(0, V, (2, 5))
    labels[1, 3:] = -100
    expected = torch.cat([_nll(logits[0, :4], labels[0, 1:]), _nll(logits[1, :2], labels[1, 1:3])]).mean()
    torch.testing.assert_close(compute_lm_loss(logits, labels), expected)
    torch.testing.assert_close(compute_lm_loss(logits[:, :-1], labels[:, 1:], shift_labels=False), expected)


def test_mlm_loss_counts_masked_positions_only_and_smooths():
    logits = torch.randn(2, 4, V)
    labels = torch.full((2, 4), -100)
    labels[0, 1], labels[1, 3] = 7, 9
    expected = torch.stack([_nll(logits[0, 1], torch.tensor(7)), _nll(logits[1, 3], torch.tensor(9))]).mean()
    torch.testing.assert_close(compute_mlm_loss(logits, labels, V), expected)
    eps = 0.1
    log_p = torch.log_softmax(logits, -1)
    smooth = torch.stack([(1 - eps) * -log_p[0, 1, 7] - eps * log_p[0, 1].mean(), (1 - eps) * -log_p[1, 3, 9] - eps * log_p[1, 3].mean()]).mean()
    torch.testing.assert_close(compute_mlm_loss(logits, labels, V, label_smoothing=eps), smooth)


def test_nothing_to_count_is_a_zero_loss_that_backpropagates():
    logits = torch.randn(2, 4, V, requires_grad=True)
    for loss in (
        compute_lm_loss(logits, torch.full((2, 4), -100)),
        compute_mlm_loss(logits, torch.full((2, 4), -100), V),
        compute_prediction_loss(logits[:, 0, :3], torch.full((2, 3), math.nan), 3, multilabel=True),
    ):
        assert loss.item() == 0.0
        loss.backward()


def test_prediction_losses_classification_multilabel_regression():
    logits = torch.randn(3, 4)
    classes = torch.tensor([1, -100, 3])
    expected = torch.stack([_nll(logits[0], torch.tensor(1)), _nll(logits[2], torch.tensor(3))]).mean()
    torch.testing.assert_close(compute_prediction_loss(logits, classes, 4), expected)

    targets = torch.tensor([[1.0, math.nan, 0.0, 1.0], [math.nan] * 4, [0.0, 0.0, math.nan, 1.0]])
    known = ~torch.isnan(targets)
    p = torch.sigmoid(logits[known])
    bce = -(targets[known] * p.log() + (1 - targets[known]) * (1 - p).log()).mean()
    torch.testing.assert_close(compute_prediction_loss(logits, targets, 4, multilabel=True), bce)

    values = torch.tensor([[2.0], [math.nan], [-1.0]])
    mse = ((logits[0, 0] - 2.0) ** 2 + (logits[2, 0] + 1.0) ** 2) / 2
    torch.testing.assert_close(compute_prediction_loss(logits[:, :1], values, 1), mse)  # one output: regression


def test_regression_learns_standardised_targets_and_reports_data_units():
    torch.manual_seed(4)
    config = small_config(num_prediction_tasks=1, prediction_task_type="regression", prediction_mean=[50.0], prediction_std=[10.0])
    model = Hyformer(config).eval()
    ids = random_ids(batch=3, length=7)
    labels = torch.tensor([[40.0], [55.0], [70.0]])
    out = model(ids, task="prediction", labels=labels)
    torch.testing.assert_close(out.loss, ((out.logits - (labels - 50.0) / 10.0) ** 2).mean())
    torch.testing.assert_close(out.extras["predictions"], out.logits * 10.0 + 50.0)


def test_classification_predictions_are_probabilities():
    model = Hyformer(small_config(num_prediction_tasks=5)).eval()
    probs = model.predict(random_ids())
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))


def test_prediction_needs_a_head_and_tasks_are_named():
    model = Hyformer(small_config())
    with pytest.raises(ValueError, match="num_prediction_tasks"):
        model(random_ids(), task="prediction")
    with pytest.raises(ValueError, match="unknown task"):
        model(random_ids(), task="cls")


# -- construction ---------------------------------------------------------------------------


def test_llama_style_init_and_tied_heads():
    torch.manual_seed(5)
    model = Hyformer(small_config(d_model=128, n_heads=4, num_prediction_tasks=2))
    embed = model.get_input_embeddings().weight
    assert model.lm_head.weight is embed and model.mlm_head.weight is embed
    assert abs(embed.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].mlp.up_proj.weight.std().item() - 0.02) < 0.002
    assert model.prediction_head.dense.bias.abs().max() == 0
    assert all(torch.equal(block.attn_norm.weight, torch.ones(128)) for block in model.blocks)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.get_num_params() == sum(unique.values())
    assert model.get_num_params() < sum(p.numel() for p in model.state_dict().values())  # tied heads counted once
    model.model.embed_tokens.weight.requires_grad_(False)
    assert model.get_num_params(trainable_only=True) == model.get_num_params() - embed.numel()


def test_seed_constructor_and_model_input():
    model = Hyformer(vocab_size=100, d_model=64, n_heads=4, n_layers=2, max_seq_len=32, num_prediction_tasks=10)
    batch = ModelInput(input_ids=torch.randint(0, 100, (4, 10)), task="prediction", labels=torch.randint(0, 10, (4,)))
    assert set(batch.keys()) == {"input_ids", "task", "labels"}
    out = model(**batch)
    assert out.logits.shape == (4, 10) and out.loss is not None
    assert Hyformer.from_config(model.config).config.d_model == 64


@pytest.mark.parametrize("bad,match", [(dict(d_model=30, n_heads=4), "heads of even size"), (dict(n_layers=0), "n_layers"),
                                       (dict(prediction_task_type="ranking"), "prediction_task_type"), (dict(pooling="max"), "pooling")])
def test_config_rejects_what_cannot_be_built(bad, match):
    with pytest.raises(ValueError, match=match):
        small_config(**bad)


def test_prediction_head_wrapper_trains_the_base_too():
    base = Hyformer(small_config())
    head = PredictionHead(base, num_labels=2, d_model=32, dropout=0.1)
    logits, loss = head(random_ids(batch=4), task="prediction", attention_mask=torch.ones(4, 12), labels=torch.tensor([0, 1, 0, 1]))
    assert logits.shape == (4, 2)
    loss.backward()
    assert base.blocks[0].attn.q_proj.weight.grad is not None
    regression = PredictionHead(base, num_labels=1, d_model=32)
    _, loss = regression(random_ids(batch=4), labels=torch.tensor([[1.0], [2.0], [1.5], [3.0]]))
    assert loss.item() > 0


# -- saving and loading ---------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert {"model.safetensors", "config.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = Hyformer.from_pretrained(tmp_path, device="cpu").eval()
    ids = random_ids()
    with torch.no_grad():
        for task in ("lm", "mlm", "prediction"):
            assert torch.equal(loaded(ids, task=task).logits, model(ids, task=task).logits)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    with_config = Hyformer.from_pretrained(tmp_path, config=HyformerConfig.from_json(tmp_path / "config.json")).eval()
    assert torch.equal(with_config(ids).logits, model(ids).logits)


def test_transformers_auto_classes_and_tjdkit_load_model(model, tmp_path):
    from transformers import AutoModelForCausalLM

    from tjdkit.models import load_model
    from tjdkit.models.hyformer.tokenizer import build_smiles_tokenizer

    model.save_pretrained(tmp_path)
    build_smiles_tokenizer().save_pretrained(tmp_path)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path))
    ids = random_ids()
    assert isinstance(auto, Hyformer) and isinstance(loaded, Hyformer)
    assert torch.equal(auto(input_ids=ids).logits, model(ids).logits)
    assert torch.equal(loaded(input_ids=ids).logits, model(ids).logits)
    assert tokenizer.eos_token == "<eos>"


def test_config_json_files(tmp_path):
    config = small_config(num_prediction_tasks=2)
    path = config.to_json(tmp_path / "config.json")
    written = json.loads(path.read_text())
    assert written["d_model"] == 32 and written["model_type"] == "hyformer" and written["num_prediction_tasks"] == 2
    again = HyformerConfig.from_json(path)
    assert {k: v for k, v in again.to_dict().items()} == config.to_dict()
    seed_style = tmp_path / "base.json"  # the seed's file: no model_type, only its eight fields
    seed_style.write_text(json.dumps({"vocab_size": 32000, "d_model": 512, "n_heads": 8, "n_layers": 6, "max_seq_len": 128,
                                      "attn_dropout": 0.0, "resid_dropout": 0.0, "eps": 1e-6}))
    loaded = HyformerConfig.from_pretrained(seed_style)
    assert (loaded.d_model, loaded.n_layers, loaded.hidden_size, loaded.num_hidden_layers) == (512, 6, 512, 6)


def test_strict_loading_names_extra_and_missing_keys(model, tmp_path):
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    state["adapter.extra"] = torch.zeros(3)
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected keys: adapter.extra"):
        Hyformer.from_pretrained(tmp_path)
    tolerant = Hyformer.from_pretrained(tmp_path, strict=False).eval()
    ids = random_ids()
    assert torch.equal(tolerant(ids).logits, model(ids).logits)
    del state["adapter.extra"], state["model.norm.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing keys: model.norm.weight"):
        Hyformer.from_pretrained(tmp_path)
    assert Hyformer.from_pretrained(tmp_path, strict=False) is not None
