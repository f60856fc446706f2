"""Saved Hyformer and factorised directories load anywhere: in plain transformers with
trust_remote_code=True (a subprocess that never imports tjdkit) they give tjdkit's logits;
without it they are refused, never silently re-initialised; and tjdkit loads them with its own
classes, never the copied code. Truth: the logits of the tjdkit model that was saved."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tjdkit.errors import TjdkitError
from tjdkit.factorize import (
    attention_tensor,
    install_factorized,
    materialize,
    tucker_layer,
)
from tjdkit.factorize.convert import decoder_layers
from tjdkit.factorize.saving import save_factorized
from tjdkit.factorize.latent import convert_latent_layer
from tjdkit.factorize.tpa import convert_layer
from tjdkit.models import load_model
from tjdkit.models.hyformer import Hyformer, HyformerConfig
from tjdkit.models.hyformer import modeling_hyformer as remote_hyformer
from tjdkit.models.hyformer.tokenizer import build_smiles_tokenizer

IDS = [[3, 9, 14, 5, 22, 7, 30, 11, 4, 17, 8, 25], [6, 12, 19, 2, 28, 13, 9, 21, 16, 10, 3, 27]]
FUTURE = "from __future__ import annotations\n"


def tamper(code: Path, marker: Path) -> None:
    """Make the copied modeling file write `marker` when imported."""
    source = code.read_text(encoding="utf-8")
    assert FUTURE in source
    code.write_text(source.replace(FUTURE, f"{FUTURE}open({str(marker)!r}, 'w').write('ran')\n", 1), encoding="utf-8")


PLAIN_SCRIPT = """
import json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM

jobs = json.loads(sys.argv[1])
ids = torch.tensor(jobs["ids"])
mask = torch.ones_like(ids)
mask[1, :3] = 0
results = {}
for name, job in jobs["dirs"].items():
    directory, out = job["path"], {}
    try:  # never trusted: must raise, not build a model
        AutoModelForCausalLM.from_pretrained(directory)
        out["untrusted"] = "loaded"
    except Exception as exc:
        out["untrusted"] = f"{type(exc).__name__}: {exc}"
    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=job["trust"]).eval()
    out["class"] = type(model).__module__ + "." + type(model).__name__
    with torch.no_grad():
        out["logits"] = model(input_ids=ids).logits
        if job["hyformer"]:
            for task in ("lm", "mlm", "prediction"):
                out[task] = model(ids, task=task, attention_mask=mask).logits
            body = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
            out["hidden"] = body(ids, attention_mask=mask).last_hidden_state
            out["generated"] = model.generate(ids[:, :4], max_new_tokens=3, do_sample=False)
            try:
                AutoModel.from_pretrained(directory)
                out["untrusted_body"] = "loaded"
            except Exception as exc:
                out["untrusted_body"] = f"{type(exc).__name__}: {exc}"
    if job.get("resave"):  # a model loaded this way and saved again must still need its code
        model.save_pretrained(job["resave"])
        try:
            AutoModelForCausalLM.from_pretrained(job["resave"])
            out["resaved_untrusted"] = "loaded"
        except Exception as exc:
            out["resaved_untrusted"] = f"{type(exc).__name__}: {exc}"
        with torch.no_grad():
            out["resaved_logits"] = AutoModelForCausalLM.from_pretrained(job["resave"], trust_remote_code=True)(ids).logits
    results[name] = out
assert "tjdkit" not in sys.modules, "tjdkit was imported"
torch.save(results, jobs["out"])
"""


def run_plain(dirs: dict[str, dict], tmp_path: Path) -> dict:
    """Load every directory in one fresh interpreter that must not import tjdkit (one start-up
    of torch and transformers for all of them). dirs: name -> {path, trust, hyformer}."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    jobs = {"ids": IDS, "out": str(tmp_path / "results.pt"), "dirs": {k: {**v, "path": str(v["path"])} for k, v in dirs.items()}}
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_SCRIPT, json.dumps(jobs)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "results.pt")


def refused(message: str) -> None:
    assert message != "loaded", "plain transformers built the model without its code"
    assert "trust_remote_code" in message, message


# ---- directories -------------------------------------------------------------------------------


def tiny_hyformer(**overrides) -> Hyformer:
    torch.manual_seed(0)
    fields = dict(vocab_size=48, d_model=32, n_heads=4, n_layers=2, max_seq_len=32, num_prediction_tasks=2)
    model = Hyformer(HyformerConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():  # non-trivial norm gains, so a copy that ignored them would differ
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def hyformer_outputs(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in one row
    with torch.no_grad():
        out = {task: model(ids, task=task, attention_mask=mask).logits for task in ("lm", "mlm", "prediction")}
        out["hidden"] = model.model(ids, attention_mask=mask).last_hidden_state
        out["logits"] = model(input_ids=ids).logits
    return out


def hyformer_dir(directory: Path) -> tuple[Path, dict]:
    """A saved regression Hyformer (targets scaled) with a tokenizer, and tjdkit's outputs on IDS."""
    model = tiny_hyformer(prediction_task_type="regression", prediction_mean=[1.0, -2.0], prediction_std=[3.0, 0.5])
    model.save_pretrained(directory)
    build_smiles_tokenizer().save_pretrained(directory)
    expected = hyformer_outputs(model, torch.tensor(IDS))
    expected["generated"] = model.generate(torch.tensor(IDS)[:, :4], max_new_tokens=3, temperature=0.0)  # the seed API
    return directory, expected


def factorised_dir(directory: Path, method: str, preset: str, materialized: bool = False) -> tuple[Path, torch.Tensor]:
    """A factorised tiny preset saved by save_factorized, and its in-memory logits on IDS."""
    model, tokenizer = load_model(preset, device="cpu")
    metadata = {"version": 1, "method": method, "materialized": materialized, "layers": {}}
    for index, layer in enumerate(decoder_layers(model)):
        if method == "tucker":
            tucker = tucker_layer(attention_tensor(layer.self_attn, model.config), (24, 8, 3))
            if materialized:
                materialize(layer.self_attn, model.config, tucker.reconstruct())
            else:
                install_factorized(layer.self_attn, model.config, tucker)
            ranks = list(tucker.ranks)
        elif method == "latent":
            ranks = list(convert_latent_layer(layer, model.config, (8, 8)).rank)
        else:
            ranks = list(convert_layer(layer, model.config, (2, 1, 1)).rank)
        metadata["layers"][str(index)] = {"ranks": ranks}
    save_factorized(model, tokenizer, directory, metadata)
    with torch.no_grad():
        return directory, model(torch.tensor(IDS)).logits


FACTORISED = [("tucker", "tiny-llama"), ("tucker", "tiny-gemma3"), ("tpa", "tiny-llama"), ("tpa", "tiny-gemma3"),
              ("latent", "tiny-llama"), ("latent", "tiny-gemma3")]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Every kind of directory saved once, then all loaded by plain transformers in one subprocess.
    -> (expected outputs by name, the subprocess's results by name, the markers of tampered copies)."""
    root = tmp_path_factory.mktemp("saved")
    expected, dirs, markers = {}, {}, {}
    path, expected["hyformer"] = hyformer_dir(root / "hyformer")
    dirs["hyformer"] = {"path": path, "trust": True, "hyformer": True}
    for method, preset in FACTORISED:
        name = f"{method}-{preset}"
        path, expected[name] = factorised_dir(root / name, method, preset)
        dirs[name] = {"path": path, "trust": True, "hyformer": False, "resave": str(root / f"resaved-{name}")}
    path, expected["materialized"] = factorised_dir(root / "materialized", "tucker", "tiny-gemma3", materialized=True)
    dirs["materialized"] = {"path": path, "trust": False, "hyformer": False}
    # Tampered copies that plain transformers may run: proof that the tamper marker works.
    for name, code in (("hyformer", "modeling_hyformer.py"), ("tpa-tiny-gemma3", "modeling_tjdkit_factorized.py")):
        copy = root / f"tampered-{name}"
        shutil.copytree(dirs[name]["path"], copy)
        markers[name] = root / f"ran-{name}"
        tamper(copy / code, markers[name])
        dirs[f"tampered-{name}"] = {**dirs[name], "path": copy, "resave": None}
    return expected, run_plain(dirs, root), markers


# ---- Hyformer -------------------------------------------------------------------------------------


def test_remote_hyformer_file_imports_torch_and_transformers_only():
    source = Path(remote_hyformer.__file__).read_text(encoding="utf-8")
    roots = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert roots <= {"__future__", "json", "dataclasses", "typing", "torch", "transformers"}, roots
    assert "import tjdkit" not in source and "from tjdkit" not in source
    assert all(hasattr(remote_hyformer, ref.split(".")[1]) for ref in remote_hyformer.AUTO_MAP.values())


@pytest.mark.parametrize(
    "overrides", [{}, {"pooling": "mean", "prediction_task_type": "classification", "num_prediction_tasks": 3}]
)
def test_remote_hyformer_copy_equals_tjdkit(overrides):
    """The copy the directories carry computes what tjdkit computes, for every task and setting
    (a guard: tjdkit's classes subclass it, so only their extras could make them differ)."""
    model = tiny_hyformer(**overrides)
    copy = remote_hyformer.Hyformer(remote_hyformer.HyformerConfig(**model.config.to_diff_dict()))
    copy.load_state_dict(model.state_dict())
    copy.eval()
    ids = torch.tensor(IDS)
    mine, theirs = hyformer_outputs(model, ids), hyformer_outputs(copy, ids)
    for key in mine:
        torch.testing.assert_close(theirs[key], mine[key], rtol=0, atol=1e-6)
    with torch.no_grad():
        prediction, copy_prediction = model(ids, task="prediction"), copy(ids, task="prediction")
        torch.testing.assert_close(copy_prediction.extras["predictions"], prediction.extras["predictions"], rtol=0, atol=1e-6)
        torch.testing.assert_close(copy(ids, task="lm", labels=ids).loss, model(ids, task="lm", labels=ids).loss)
        masked = torch.full_like(ids, -100)
        masked[:, 2] = ids[:, 2]
        torch.testing.assert_close(copy(ids, task="mlm", labels=masked).loss, model(ids, task="mlm", labels=masked).loss)


def test_tjdkit_hyformer_is_built_on_the_copied_file():
    """One truth: tjdkit's Hyformer classes subclass the file saved directories carry, and the
    layers and losses tjdkit imports are that file's own objects, not copies."""
    from tjdkit.models.hyformer import KVCache, layers, losses, model

    for mine, shared in ((Hyformer, remote_hyformer.Hyformer), (HyformerConfig, remote_hyformer.HyformerConfig),
                         (model.HyformerModel, remote_hyformer.HyformerModel), (KVCache, remote_hyformer.KVCache)):
        assert issubclass(mine, shared) and mine.__module__.startswith("tjdkit.models.hyformer."), mine
    for name in ("RMSNorm", "Rotary", "Attention", "SwiGLU", "HyformerBlock", "PredictionLayer", "attention_allowed", "pool"):
        assert getattr(layers, name) is getattr(remote_hyformer, name), name
    for name in ("compute_lm_loss", "compute_mlm_loss", "compute_prediction_loss", "IGNORE_INDEX"):
        assert getattr(losses, name) is getattr(remote_hyformer, name), name
    for name in ("forward", "predict", "_in_data_units"):
        assert name not in vars(Hyformer), f"tjdkit's Hyformer redefines {name}"
    assert "forward" not in vars(model.HyformerModel)


def test_hyformer_directory_loads_in_plain_transformers(plain):
    expected, results, _ = plain
    got = results["hyformer"]
    assert got["class"].startswith("transformers_modules.") and got["class"].endswith("modeling_hyformer.Hyformer")
    for key in ("lm", "mlm", "prediction", "hidden", "logits"):
        torch.testing.assert_close(got[key], expected["hyformer"][key], rtol=0, atol=1e-5)
    assert torch.equal(got["generated"], expected["hyformer"]["generated"])  # transformers' greedy = the seed's


def test_hyformer_directory_without_trust_remote_code_is_refused(plain):
    _, results, _ = plain
    refused(results["hyformer"]["untrusted"])
    refused(results["hyformer"]["untrusted_body"])


def test_tjdkit_loads_hyformer_with_its_own_code_never_the_copy(plain, tmp_path):
    expected, results, markers = plain
    directory, _ = hyformer_dir(tmp_path / "hyformer")
    marker = tmp_path / "copied_code_ran"
    tamper(directory / "modeling_hyformer.py", marker)
    model, _ = load_model(str(directory), device="cpu")
    assert isinstance(model, Hyformer) and type(model).__module__ == "tjdkit.models.hyformer.model"
    for key, value in hyformer_outputs(model, torch.tensor(IDS)).items():
        torch.testing.assert_close(value, expected["hyformer"][key], rtol=0, atol=1e-6)
    assert not marker.exists()
    assert markers["hyformer"].exists()  # the same tamper did run where transformers trusted the copy


def test_old_hyformer_directory_without_auto_map_still_loads(tmp_path):
    directory, expected = hyformer_dir(tmp_path / "hyformer")
    config = json.loads((directory / "config.json").read_text())
    del config["auto_map"]
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modeling_hyformer.py").unlink()
    model, _ = load_model(str(directory), device="cpu")
    torch.testing.assert_close(hyformer_outputs(model, torch.tensor(IDS))["lm"], expected["lm"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("change", ["other class", "other model type"])
def test_any_other_auto_map_is_still_refused(tmp_path, change):
    directory, _ = hyformer_dir(tmp_path / "hyformer")
    config = json.loads((directory / "config.json").read_text())
    if change == "other class":
        config["auto_map"] = {**remote_hyformer.AUTO_MAP, "AutoModelForCausalLM": "evil.Model"}
    else:
        config["model_type"] = "llama"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(TjdkitError, match="custom model code"):
        load_model(str(directory), device="cpu")


# ---- factorised models ----------------------------------------------------------------------------


def test_remote_factorised_file_imports_torch_and_transformers_only():
    from tjdkit.factorize import modeling_tjdkit_factorized

    source = Path(modeling_tjdkit_factorized.__file__).read_text(encoding="utf-8")
    assert "import tjdkit" not in source and "from tjdkit" not in source
    roots = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert roots <= {"__future__", "math", "sys", "typing", "torch", "transformers"}, roots


@pytest.mark.parametrize("method,preset", FACTORISED)
def test_factorised_directory_loads_in_plain_transformers(plain, method, preset):
    expected, results, _ = plain
    name = f"{method}-{preset}"
    got = results[name]
    assert "transformers_modules." in got["class"] and "modeling_tjdkit_factorized" in got["class"]
    torch.testing.assert_close(got["logits"], expected[name], rtol=0, atol=1e-5)
    refused(got["untrusted"])
    refused(got["resaved_untrusted"])  # saved again by plain transformers: still refused without its code
    torch.testing.assert_close(got["resaved_logits"], expected[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize("method,preset", FACTORISED[:1] + FACTORISED[3:])
def test_factorised_directory_config_and_tjdkit_load(tmp_path, method, preset):
    directory, expected = factorised_dir(tmp_path / "out", method, preset)
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "tjdkit_factorized" and (directory / "modeling_tjdkit_factorized.py").is_file()
    assert config["tjdkit_factorization"]["base_model_type"] in ("llama", "gemma3_text")
    model, _ = load_model(str(directory), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor(IDS)).logits, expected, rtol=0, atol=1e-5)


def test_materialised_tucker_is_an_ordinary_directory(plain):
    """Dense weights: no code, no auto_map, and plain transformers loads it without trust_remote_code."""
    expected, results, _ = plain
    got = results["materialized"]
    assert got["untrusted"] == "loaded" and got["class"].startswith("transformers.models.gemma3.")
    torch.testing.assert_close(got["logits"], expected["materialized"], rtol=0, atol=1e-5)


def test_tjdkit_loads_factorised_with_its_own_code_never_the_copy(plain, tmp_path):
    _, _, markers = plain
    directory, expected = factorised_dir(tmp_path / "tpa", "tpa", "tiny-gemma3")
    marker = tmp_path / "copied_code_ran"
    tamper(directory / "modeling_tjdkit_factorized.py", marker)
    model, tokenizer = load_model(str(directory), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor(IDS)).logits, expected, rtol=0, atol=1e-5)
    assert tokenizer is not None and not marker.exists()
    assert type(decoder_layers(model)[0].self_attn).__module__ == "tjdkit.factorize.tpa"
    assert markers["tpa-tiny-gemma3"].exists()  # the same tamper did run where transformers trusted the copy


def test_old_factorised_directory_without_auto_map_still_loads(tmp_path):
    directory, expected = factorised_dir(tmp_path / "tucker", "tucker", "tiny-llama")
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = config["tjdkit_factorization"].pop("base_model_type")
    del config["auto_map"]
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modeling_tjdkit_factorized.py").unlink()
    model, _ = load_model(str(directory), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor(IDS)).logits, expected, rtol=0, atol=1e-5)


def test_factorised_directory_with_a_foreign_auto_map_is_refused(tmp_path):
    directory, _ = factorised_dir(tmp_path / "tpa", "tpa", "tiny-llama")
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "modeling_tjdkit_factorized.Other"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(TjdkitError, match="custom model code"):
        load_model(str(directory), device="cpu")
