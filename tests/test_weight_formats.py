"""fp16-weights and bfloat16: lossless decoding holds inside each format, and each stays close to float32."""

import pytest
import torch

from tjdkit.decoding import generate
from tjdkit.errors import TjdkitError
from tjdkit.models import load_model
from tjdkit.models.quantize import is_quantized, quantize_weights, refuse_quantized, weight_format, weights_copy

from tests.test_decoding import N, greedy_no_cache, prompt, weak_head

MODELS = ["tiny-llama", "tiny-gemma3", "tiny-gpt2"]


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name) for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_fp16_weights_are_close_to_float32_and_decode_losslessly_inside_the_format(models, name):
    model, tokenizer = models[name]
    quantized = weights_copy(model, "fp16-weights")
    assert weight_format(quantized) == "fp16-weights" and is_quantized(quantized) and weight_format(model) == "float32"
    assert not any(isinstance(module, torch.nn.Linear) for module in quantized.modules())  # every Linear is converted
    ids = prompt(tokenizer)
    with torch.no_grad():
        full, low = model(ids).logits, quantized(ids).logits
    assert (low - full).abs().max() < 1e-2 * full.abs().max()  # float16 rounding of the weights, not another model
    head = weak_head(model, "cp", horizon=4)
    reference = greedy_no_cache(quantized, ids, N)  # the format's own greedy output, no cache
    for mode, drafter in (("ar", "hybrid"), ("verify", "head"), ("verify", "hybrid")):
        tokens, _ = generate(quantized, ids, mode=mode, head=head, max_new_tokens=N, drafter=drafter)
        assert tokens == reference, (mode, drafter)


@pytest.mark.parametrize("name", MODELS)
def test_fp16_weights_are_torchs_dynamic_fp16_quantisation_exactly(models, name):
    """quantize_weights packs each weight once; torch's quantize_dynamic is the truth it must equal."""
    import copy
    import warnings

    from torch.ao.quantization import quantize_dynamic

    model, tokenizer = models[name]
    ours = quantize_weights(copy.deepcopy(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchs = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.float16)
    assert [type(m) for m in ours.modules()] == [type(m) for m in torchs.modules()]
    assert [repr(m) for m in ours.modules() if "Quantized" in type(m).__name__] == \
        [repr(m) for m in torchs.modules() if "Quantized" in type(m).__name__]
    ids = prompt(tokenizer)
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, torchs(ids).logits)
    assert not ours.training


def test_bfloat16_copy_decodes_losslessly_inside_bfloat16(models):
    model, tokenizer = models["tiny-gemma3"]
    low = weights_copy(model, "bfloat16")
    assert weight_format(low) == "bfloat16" and next(model.parameters()).dtype == torch.float32  # a copy
    ids = prompt(tokenizer)
    head = weak_head(model, "cp", horizon=4)
    ar, _ = generate(low, ids, mode="ar", max_new_tokens=N)
    verify, _ = generate(low, ids, mode="verify", head=head, max_new_tokens=N, drafter="head")
    assert verify == ar


def test_load_model_with_fp16_weights_and_what_refuses_them():
    model, _ = load_model("tiny-llama", dtype="fp16-weights")
    assert weight_format(model) == "fp16-weights"
    with pytest.raises(TjdkitError, match="fp16-weights models decode only"):
        refuse_quantized(model, "training a head")
    with pytest.raises(TjdkitError, match="starts from float32"):
        quantize_weights(load_model("tiny-llama", dtype="bfloat16")[0])
    with pytest.raises(TjdkitError, match="unknown weight format"):
        weights_copy(model, "int4")


def test_train_tnot_and_factorize_refuse_fp16_weights():
    from tjdkit.config import TrainRecipe
    from tjdkit.factorize import FactorizeOptions, factorize_model
    from tjdkit.recipes import load_recipe
    from tjdkit.tnot import tnot_generate
    from tjdkit.training.heads import train

    model, tokenizer = load_model("tiny-llama", dtype="fp16-weights")
    with pytest.raises(TjdkitError, match="fp16-weights models decode only"):
        train(load_recipe("tiny-stemp", TrainRecipe, ["train.max_steps=1"]), "/nonexistent/never-written", model, tokenizer)
    with pytest.raises(TjdkitError, match="fp16-weights models decode only"):
        tnot_generate(model, prompt(tokenizer), max_new_tokens=4)
    with pytest.raises(TjdkitError, match="fp16-weights models decode only"):
        factorize_model(model, tokenizer, FactorizeOptions())


@pytest.mark.parametrize("args, message", [
    (["--dtype", "int4"], "unknown --dtype 'int4'"),
    (["--dtype", ","], "names no weight format"),
])
def test_bench_dtype_errors_are_one_line(run_cli, args, message):
    code, out, err = run_cli("bench", "--model", "tiny-llama", "--modes", "ar", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_chat_refuses_tnot_on_fp16_weights_in_one_line(run_cli):
    code, out, err = run_cli("chat", "--model", "tiny-llama", "--dtype", "fp16-weights", "--tnot", "--prompt", "Hi", "-n", "4")
    assert code == 2 and "fp16-weights models decode only" in err and "Traceback" not in err
