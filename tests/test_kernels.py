"""The output layer's kernel: chosen by measuring on this machine, once, and the same numbers either way."""

import json

import pytest
import torch

from tjdkit.kernels import linear as kernels


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(kernels, "_chosen", {})
    monkeypatch.delenv("TJDKIT_OUTPUT_KERNEL", raising=False)


def layer(bias=False, vocab=300, hidden=24, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(hidden, vocab, bias=bias)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 16, 17])
def test_both_kernels_compute_the_layer(monkeypatch, bias, rows):
    lm_head = layer(bias)
    hidden = torch.randn(rows, 24)
    for kernel in kernels.KERNELS:
        monkeypatch.setenv("TJDKIT_OUTPUT_KERNEL", kernel)
        assert torch.allclose(kernels.output_layer(lm_head, hidden), lm_head(hidden), atol=1e-5)


def test_the_measured_faster_kernel_is_chosen_once_and_remembered_on_disk(monkeypatch, tmp_path):
    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path))
    calls = []

    def fake(lm_head, repeats=3):
        calls.append(1)
        return {"linear": 5.0, "matmul": 2.0}

    monkeypatch.setattr(kernels, "measure_kernels", fake)
    lm_head = layer()
    assert kernels.choose_kernel(lm_head) == "matmul" and kernels.choose_kernel(lm_head) == "matmul"
    assert len(calls) == 1  # measured once per process
    stored = json.loads((tmp_path / kernels.STORE).read_text())
    assert stored[kernels.kernel_key(lm_head)]["kernel"] == "matmul"

    monkeypatch.setattr(kernels, "_chosen", {})  # a new process: reads the machine's choice, measures nothing
    monkeypatch.setattr(kernels, "measure_kernels", lambda *a, **k: pytest.fail("measured again"))
    assert kernels.choose_kernel(lm_head) == "matmul" and kernels.chosen_kernel(lm_head) == "matmul"

    monkeypatch.setattr(kernels, "_chosen", {})  # another shape is another measurement
    monkeypatch.setattr(kernels, "measure_kernels", lambda *a, **k: {"linear": 1.0, "matmul": 3.0})
    assert kernels.choose_kernel(layer(vocab=301)) == "linear"


def test_a_corrupt_or_unwritable_store_costs_only_a_measurement(monkeypatch, tmp_path):
    (tmp_path / kernels.STORE).write_text("{not json")
    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "measure_kernels", lambda *a, **k: {"linear": 1.0, "matmul": 3.0})
    assert kernels.choose_kernel(layer()) == "linear"
    monkeypatch.setattr(kernels, "_chosen", {})
    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path / kernels.STORE / "below-a-file"))  # cannot be created
    assert kernels.choose_kernel(layer()) == "linear"


def test_real_measurement_returns_both_kernels_in_milliseconds():
    timings = kernels.measure_kernels(layer(), repeats=1)
    assert set(timings) == set(kernels.KERNELS) and all(ms > 0 for ms in timings.values())


def test_forcing_a_kernel_needs_no_measurement(monkeypatch):
    monkeypatch.setenv("TJDKIT_OUTPUT_KERNEL", "linear")
    monkeypatch.setattr(kernels, "measure_kernels", lambda *a, **k: pytest.fail("measured"))
    assert kernels.choose_kernel(layer()) == "linear" and kernels.chosen_kernel(layer()) == "linear"


def test_the_models_own_forward_runs_on_the_measured_kernel_inside_the_context(monkeypatch):
    """transformers' generate calls the model's forward: inside `measured_output_kernel` its output layer
    goes through the kernel tjdkit's modes use (counted here), with the same logits, and only there."""
    from tjdkit.models import load_model

    model, _ = load_model("tiny-llama")
    ids = torch.randint(3, 200, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(ids).logits
    calls = []
    matmul = kernels._matmul
    monkeypatch.setattr(kernels, "_matmul", lambda layer, hidden: calls.append(hidden.shape[0]) or matmul(layer, hidden))
    monkeypatch.setenv("TJDKIT_OUTPUT_KERNEL", "matmul")
    with torch.no_grad():
        with kernels.measured_output_kernel(model):
            inside = model(ids).logits
            model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=3, pad_token_id=0)
        after = model(ids).logits
    assert calls[0] == 6 and len(calls) == 4  # the forward above, then generate's prefill and two steps
    assert torch.allclose(inside, plain, atol=1e-5) and torch.equal(after, plain)
    assert "forward" not in vars(model.get_output_embeddings())  # the layer's own forward is back
