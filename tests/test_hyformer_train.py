"""Hyformer training and evaluation: the pieces against hand-checked truths, the commands as a user runs them,
and joint heads on a Hyformer backbone."""

import json
from collections import Counter
from dataclasses import replace

import pytest
import torch

pytest.importorskip("rdkit")

from tjdkit.config import HyformerTrainRecipe  # noqa: E402
from tjdkit.recipes import load_recipe  # noqa: E402
from tjdkit.models.hyformer.masking import mask_tokens  # noqa: E402
from tjdkit.training.hyformer import draw_task, random_smiles, train_hyformer  # noqa: E402

TINY = ["--set", "hyformer.d_model=32", "--set", "hyformer.n_layers=1", "--set", "hyformer.n_heads=2",
        "--set", "data.train_size=64", "--set", "data.eval_size=16", "--set", "data.eval_samples=8",
        "--set", "train.batch_size=8", "--set", "train.eval_every=3", "--set", "train.save_every=3"]


def tiny_recipe(**train) -> HyformerTrainRecipe:
    overrides = [text for text in TINY if text != "--set"]
    recipe = load_recipe("hyformer-smiles", HyformerTrainRecipe, overrides)
    return replace(recipe, train=replace(recipe.train, **train))


# -- pieces ---------------------------------------------------------------------------------


def test_task_draws_follow_the_weights_and_are_a_function_of_seed_and_step():
    weights = {"lm": 2.0, "mlm": 1.0, "prediction": 1.0}
    draws = Counter(draw_task(0, step, weights) for step in range(4000))
    assert abs(draws["lm"] / 4000 - 0.5) < 0.03 and abs(draws["mlm"] / 4000 - 0.25) < 0.03
    assert [draw_task(3, s, weights) for s in range(50)] == [draw_task(3, s, weights) for s in range(50)]
    assert {draw_task(0, s, {"lm": 0.0, "mlm": 1.0, "prediction": 0.0}) for s in range(100)} == {"mlm"}


def test_mask_tokens_corrupts_real_tokens_after_the_task_token_like_bert():
    B, T, MASK = 400, 30, 3
    ids = torch.randint(7, 50, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[:, 20:] = 0  # padding is never chosen
    inputs, labels = mask_tokens(ids, mask, 0.15, MASK, torch.arange(7, 50), torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 20:].any()
    assert chosen.any(dim=1).all()  # at least one per row
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    share = chosen.sum().item() / (B * 19)
    assert 0.13 < share < 0.18
    masked = (inputs[chosen] == MASK).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    assert 0.75 < masked < 0.85 and 0.07 < kept < 0.16  # 10% kept + random draws that hit the same token
    again = mask_tokens(ids, mask, 0.15, MASK, torch.arange(7, 50), torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)


def test_random_smiles_is_the_same_molecule():
    from tjdkit.data.smiles_metrics import canonical_smiles

    text = "OC1=C(Cl)C=C(C=C1[N+]([O-])=O)[N+]([O-])=O"
    variants = {random_smiles(text, seed) for seed in range(5)}
    assert len(variants) > 1
    assert {canonical_smiles(v) for v in variants} == {canonical_smiles(text)}


# -- training through the library -----------------------------------------------------------


def test_resume_after_a_crash_ends_bit_identical(tmp_path):
    recipe = tiny_recipe(max_steps=7)
    whole = train_hyformer(recipe, tmp_path / "whole")

    class Crash(Exception):
        pass

    def crash_after_step_5(event):
        if event["kind"] == "step" and event["step"] == 5:
            raise Crash

    with pytest.raises(Crash):
        train_hyformer(recipe, tmp_path / "cut", on_event=crash_after_step_5)
    resumed = train_hyformer(recipe, tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 3 and resumed.steps == 7
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole/last/model.safetensors"), load_file(tmp_path / "cut/last/model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    tasks = lambda run: [json.loads(line)["task"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert tasks("whole") == tasks("cut") and len(tasks("cut")) == 7
    assert whole.best == resumed.best or resumed.best is not None


def test_training_lowers_every_task_loss(tmp_path):
    recipe = tiny_recipe(max_steps=60, eval_every=30, save_every=60, lr=3e-3)
    result = train_hyformer(recipe, tmp_path / "run")
    evals = [record for record in result.history if "eval_loss" in record]
    first, last = evals[0], evals[-1]
    assert last["eval_lm_nll"] < first["eval_lm_nll"] and last["eval_mlm_nll"] < first["eval_mlm_nll"]
    assert last["eval_loss"] < first["eval_loss"]
    assert {record["task"] for record in result.history} == {"lm", "mlm", "prediction"}


# -- the commands ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from tjdkit.cli import main

    out = tmp_path_factory.mktemp("hyformer") / "run"
    try:
        main(["train", "hyformer-smiles", "--out", str(out), *TINY, "--set", "train.max_steps=6",
              "--json", str(out.parent / "train.json")])
    except SystemExit as exit_:
        assert exit_.code == 0
    return out


def test_train_writes_loadable_model_checkpoints(trained_run):
    from tjdkit.models import load_model
    from tjdkit.models.hyformer import Hyformer

    summary = json.loads((trained_run.parent / "train.json").read_text())
    assert summary["kind"] == "hyformer" and summary["steps"] == 6 and summary["train_molecules"] == 64
    assert {"eval_lm_nll", "eval_mlm_nll", "eval_tpsa_rmse", "eval_tpsa_r2", "eval_validity"} <= set(summary["eval"])
    for which in ("best", "last"):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "checkpoint.json"):
            assert (trained_run / which / name).is_file(), (which, name)
    assert (trained_run / "last/trainer_state.safetensors").is_file() and (trained_run / "last/trainer_state.json").is_file()
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7)) and all(r["task"] in ("lm", "mlm", "prediction") for r in records)
    model, tokenizer = load_model(str(trained_run / "best"))
    assert isinstance(model, Hyformer) and model.config.prediction_mean and tokenizer.bos_token == "<lm>"


def test_eval_scores_generation_and_tpsa(run_cli, trained_run, tmp_path):
    code, out, err = run_cli("eval", str(trained_run), "--dataset", "smiles", "--samples", "12", "--limit", "20",
                             "--json", str(tmp_path / "e.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    g, p = result["generation"], result["prediction"]
    assert g["total"] == 12 and 0 <= g["validity"] <= 1 and g["valid"] == round(g["validity"] * 12)
    assert p["n"] == 20 and p["baseline_rmse"] > 0 and abs(p["baseline"] - 54.3) < 20
    assert "TPSA on the test split" in out and "valid" in out
    code, _, err = run_cli("eval", str(trained_run / "best"), "--dataset", "smiles", "--samples", "4", "--limit", "5")
    assert code == 0, err  # a saved Hyformer directory works too


def test_sampling_is_seeded_and_cached_generation_matches(trained_run):
    from tjdkit.models import load_model
    from tjdkit.evaluation.molecules import sample_smiles

    model, tokenizer = load_model(str(trained_run / "best"))
    assert sample_smiles(model, tokenizer, 6, seed=1) == sample_smiles(model, tokenizer, 6, seed=1)
    prefix = torch.full((4, 1), tokenizer.bos_token_id)
    kwargs = dict(max_new_tokens=40, temperature=1.0, eos=tokenizer.eos_token_id, seed=5)
    assert torch.equal(model.generate(prefix, **kwargs), model.generate(prefix, use_cache=False, **kwargs))


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "hyformer-smiles", "--head", "cp"], "--head applies to joint-head recipes"),
        (["train", "hyformer-smiles", "--set", "hyformer.d_model=30"], "heads of even size"),
        (["train", "hyformer-smiles", "--set", "tasks.lm=0", "--set", "tasks.mlm=0", "--set", "tasks.prediction=0"], "at least one"),
        (["train", "hyformer-smiles", "--set", "tasks.mlm=-1"], "tasks.mlm"),
        (["train", "hyformer-smiles", "--set", "hyformer.init=/no/such/dir"], "not a saved Hyformer"),
        (["eval", "tiny-hyformer", "--dataset", "stemp"], "use --dataset smiles"),
        (["eval", "tiny-hyformer", "--dataset", "smiles", "--modes", "ar"], "--modes applies to joint heads"),
        (["eval", "tiny-hyformer", "--dataset", "smiles", "--split", "hard"], "unknown split"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(run_cli, tmp_path, args, message):
    code, _, err = run_cli(*args, *(["--out", str(tmp_path / "r")] if args[0] == "train" else []))
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_hyformer_run_is_not_a_head(run_cli, trained_run):
    code, _, err = run_cli("chat", "--head", str(trained_run), "--prompt", "C")
    assert code == 2 and "is a Hyformer run, not a joint head" in err


# -- joint heads on a Hyformer backbone -------------------------------------------------------


def test_verified_decoding_on_a_hyformer_equals_greedy():
    from tjdkit.decoding import generate
    from tjdkit.heads import build_head
    from tjdkit.models import load_model

    model, tokenizer = load_model("tiny-hyformer")
    torch.manual_seed(0)
    for name in ("cp", "mps"):
        head = build_head(name, hidden_size=64, vocab_size=len(tokenizer), rank=2, horizon=3).eval()
        prompt = torch.tensor([[tokenizer.bos_token_id, 8, 8]])
        greedy = model.generate(prompt, max_new_tokens=24, temperature=0, eos=[])[0, 3:].tolist()
        verified, stats = generate(model, prompt, mode="verify", head=head, max_new_tokens=24)
        assert verified == greedy and stats.forwards <= 24


def test_a_cp_head_trains_on_a_trained_hyformer(run_cli, trained_run, tmp_path):
    run = tmp_path / "head"
    code, _, err = run_cli("train", "stemp-cp", "--model", str(trained_run / "best"), "--out", str(run),
                           "--set", "data.dataset=smiles", "--set", "data.train_size=32", "--set", "data.eval_size=8",
                           "--set", "head.draft_vocab=null", "--set", "train.max_steps=4", "--set", "train.eval_every=2",
                           "--json", str(tmp_path / "t.json"))
    assert code == 0, err
    assert json.loads((tmp_path / "t.json").read_text())["eval_nll"] > 0
    code, out, err = run_cli("eval", str(run), "--dataset", "smiles", "--limit", "2", "--max-new-tokens", "12",
                             "--json", str(tmp_path / "e.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["modes"]["verify"]["accuracy"] is None and result["nll"]["head"] > 0
