"""`tjdkit bench` as a user runs it: a head trained once and cached, every mode timed, parity checked."""

import json
import re

import pytest

from tjdkit.config import TrainRecipe
from tjdkit.recipes import load_recipe

SMALL = ["data.train_size=32", "data.eval_size=4", "data.distill_tokens=24", "train.max_steps=4",
         "train.eval_every=2", "train.save_every=2"]
BENCH = ["bench", "--model", "tiny-llama", "--rank", "2", "--horizon", "3", "--prompts", "2", "--max-new-tokens", "12"]


@pytest.fixture
def small_bench_recipe(monkeypatch):
    """bench-<dataset> with the sizes cut down, so that training the head takes seconds."""
    import tjdkit.bench.heads

    original = tjdkit.bench.heads.bench_recipe

    def small(dataset, model, head, rank, horizon):
        recipe = original(dataset, model, head, rank, horizon)
        return load_recipe(f"bench-{dataset}", TrainRecipe, SMALL, {
            "model.name": recipe.model.name, "head.name": head, "head.rank": rank, "head.horizon": horizon})

    monkeypatch.setattr(tjdkit.bench.heads, "bench_recipe", small)


def test_bench_trains_a_head_once_then_reuses_it(run_cli, tmp_path, small_bench_recipe):
    code, out, err = run_cli(*BENCH, "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"))
    assert code == 0, err
    assert "training one with recipe bench-sharegpt" in " ".join(err.split())  # chat text by default
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["head"]["trained_now"] and result["head"]["rank"] == 2 and result["head"]["horizon"] == 3
    assert list(result["modes"]) == ["ar", "hf", "draft", "verify", "lookup"]
    assert result["parity"] is True
    outputs = result["outputs"]
    assert outputs["verify"] == outputs["ar"] == outputs["hf"] == outputs["lookup"]  # every lossless mode
    verify = result["modes"]["verify"]
    assert verify["tau"] >= 1.0 and 0.0 <= verify["lookup_share"] <= 1.0
    # the head offers H-1 = 2 drafts a step; lookup steps (hybrid drafter, the default) up to 10
    assert len(verify["acceptance_by_position"]) >= 2
    plain = max(("ar", "hf"), key=lambda mode: result["modes"][mode]["tokens_per_second"])  # the faster plain decoding
    assert {key: result["baselines"][key] for key in ("speedup", "speedup_vs_lookup")} == {"speedup": plain, "speedup_vs_lookup": "lookup"}
    assert result["modes"][plain]["speedup"] == 1.0 and result["modes"]["lookup"]["speedup_vs_lookup"] == 1.0
    assert result["modes"]["ar"]["tokens_per_forward"] == 1.0 and result["environment"]["output_layer_kernel"] in ("linear", "matmul")
    assert result["baselines"]["decode_speedup_vs_lookup"] == "lookup" and result["baselines"]["decode_speedup"] in ("ar", "hf")
    for row in result["modes"].values():
        assert row["tokens_per_second"] > 0 and row["peak_memory_mb"] > 0 and row["new_tokens"] == 24
        assert 0 < row["prefill_seconds"] < row["seconds"] and row["decode_tokens_per_second"] > 0
    assert result["environment"]["device"] == "cpu" and result["environment"]["threads"] >= 1
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "all lossless modes identical to ar" in out and "verify" in out
    # float32 and the fast CPU format, timed in the same rotation; parity inside each format
    assert result["dtype"] == "float32" and list(result["by_dtype"]) == ["float32", "fp16-weights"]
    fast = result["by_dtype"]["fp16-weights"]
    assert fast["outputs"]["verify"] == fast["outputs"]["ar"] == fast["outputs"]["lookup"]
    assert all(row["identical"] for row in fast["parity"].values() if row["lossless"])
    assert set(result["dtype_speedups"]["fp16-weights"]) == set(result["modes"])
    assert result["dtype_agreement"]["fp16-weights"]["prompts"] == 2
    assert "fp16-weights over float32" in " ".join(out.split())

    code, out, err = run_cli(*BENCH, "--modes", "ar,verify,assisted", "--json", str(tmp_path / "c.json"))
    assert code == 0, err
    assert "using the cached cp head" in " ".join(err.split()) and "training" not in err
    again = json.loads((tmp_path / "c.json").read_text())
    assert not again["head"]["trained_now"] and list(again["modes"]) == ["ar", "verify", "assisted"]
    # transformers' generate drafting with the same head: lossless, and tau from its own counts
    assert again["parity"] is True and again["outputs"]["assisted"] == again["outputs"]["ar"]
    assert again["modes"]["assisted"]["tau"] >= 1.0 and "assisted" in out
    assert again["head"]["run_dir"] == result["head"]["run_dir"]


def test_interrupted_head_training_is_resumed_not_used(tmp_path, monkeypatch, small_bench_recipe):
    from tjdkit.bench import head_cache_dir, resolve_head_run
    from tjdkit.training.runs import is_run

    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path))

    def stop_after_a_checkpoint(event):
        if event.get("kind") == "step" and event.get("step") == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resolve_head_run("tiny-llama", "cp", 2, 3, "stemp", on_event=stop_after_a_checkpoint)
    final = head_cache_dir("tiny-llama", "cp", 2, 3, "stemp")
    partial = final.with_name(final.name + ".training")
    assert not final.exists() and is_run(partial)
    events = []
    run_dir, trained = resolve_head_run("tiny-llama", "cp", 2, 3, "stemp", on_event=events.append)
    assert (run_dir, trained) == (final, True) and is_run(final) and not partial.exists()
    assert [event["step"] for event in events if event.get("kind") == "resume"] == [2]  # the last checkpoint


def test_a_partial_head_with_a_pickled_state_is_retrained_not_loaded(tmp_path, monkeypatch, small_bench_recipe):
    """An older tjdkit's (or a planted) trainer_state.pt in the bench cache is never unpickled: bench starts over."""
    import os

    import torch

    from tjdkit.bench import head_cache_dir, resolve_head_run
    from tjdkit.training.runs import is_run

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path))
    final = head_cache_dir("tiny-llama", "cp", 2, 3, "stemp")
    last = final.with_name(final.name + ".training") / "last"
    last.mkdir(parents=True)
    (last / "checkpoint.json").write_text("{}")
    torch.save({"step": 1, "payload": RunsCode()}, last / "trainer_state.pt")
    events = []
    run_dir, trained = resolve_head_run("tiny-llama", "cp", 2, 3, "stemp", on_event=events.append)
    assert (run_dir, trained) == (final, True) and is_run(final)
    assert not any(event.get("kind") == "resume" for event in events)
    assert not (tmp_path / "pwned").exists()


def test_bench_with_a_given_run(run_cli, tmp_path):
    from tjdkit.training.heads import train

    run_dir = tmp_path / "run"
    train(load_recipe("tiny-stemp", TrainRecipe, ["data.train_size=16", "data.eval_size=4", "train.max_steps=2",
                                                  "head.horizon=3"]), run_dir)
    code, out, err = run_cli("bench", "--head-dir", str(run_dir), "--prompts", "1", "--max-new-tokens", "6",
                             "--modes", "ar,verify,draft", "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["model"] == "tiny-llama" and result["head"]["run_dir"] == str(run_dir)
    assert result["parity"] is True and result["outputs"]["verify"] == result["outputs"]["ar"]

    # one fast format alone (its output layer is a quantised Linear, with no weight tensor) and no `ar`:
    # parity is taken against transformers' greedy; with no plain mode at all it is null, never true
    code, out, err = run_cli("bench", "--head-dir", str(run_dir), "--prompts", "1", "--max-new-tokens", "6",
                             "--modes", "hf,verify", "--dtype", "fp16-weights", "--json", str(tmp_path / "c.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["dtype"] == "fp16-weights" and result["parity_reference"] == "hf" and result["parity"] is True
    assert result["outputs"]["verify"] == result["outputs"]["hf"] and "identical to hf" in out
    code, out, err = run_cli("bench", "--head-dir", str(run_dir), "--prompts", "1", "--max-new-tokens", "6",
                             "--modes", "verify,draft", "--json", str(tmp_path / "d.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["parity"] is None and "parity_by_mode" in result and "parity not checked" in " ".join(out.split())


def test_head_cache_names_are_one_safe_directory(tmp_path, monkeypatch):
    from tjdkit.bench import head_cache_dir

    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path))
    path = head_cache_dir("gemma3", "cp", 4, 4, "stemp")
    assert path.parent == tmp_path / "heads" and re.fullmatch(r"gemma3-cp-r4-h4-stemp-[0-9a-f]{8}", path.name)
    assert head_cache_dir("gemma3", "cp", 4, 4, "stemp") == path  # the same recipe, the same head

    from tjdkit.bench import heads as bench_heads

    original = bench_heads.bench_recipe

    def more_steps(*args):
        recipe = original(*args)
        recipe.train.epochs += 1
        return recipe

    monkeypatch.setattr(bench_heads, "bench_recipe", more_steps)  # a release that trains longer: a new head
    assert head_cache_dir("gemma3", "cp", 4, 4, "stemp") != path
    monkeypatch.undo()
    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path))
    for model in ("google/gemma-3-1b-it", "/models/x.gguf", "../up"):
        path = head_cache_dir(model, "cp", 4, 4, "stemp")
        assert path.parent == tmp_path / "heads" and "/" not in path.name and not path.name.startswith(".")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--modes", "ar,beam"], "unknown bench mode"),
        (["--modes", "ar,ar"], "twice"),
        (["--horizon", "1"], "horizon"),
        (["--dataset", "gsm8k"], "no bench recipe"),
        (["--split", "nope"], "unknown split"),
        (["--head", "stp"], "multi-token head"),
        (["--plot", "out.txt"], "PNG"),
        (["--head-dir", "./no/such/run"], "run directory not found"),
        (["--prompts", "0"], "prompts"),
        (["--prompts-file", "./no/such/file.txt"], "prompts file not found"),
        (["--drafter", "tree"], "unknown --drafter"),
    ],
)
def test_bench_user_errors_are_one_line_and_exit_2(run_cli, args, message):
    code, out, err = run_cli("bench", "--model", "tiny-llama", *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_speedups_divide_by_the_fastest_plain_decoding_and_by_lookup():
    from tjdkit.bench import speedups

    rows = {mode: {"tokens_per_second": tps} for mode, tps in [("ar", 10.0), ("hf", 20.0), ("verify", 50.0), ("lookup", 25.0)]}
    assert speedups(rows) == {"speedup": "hf", "speedup_vs_lookup": "lookup"}
    assert [rows[mode]["speedup"] for mode in rows] == [0.5, 1.0, 2.5, 1.25]
    assert [rows[mode]["speedup_vs_lookup"] for mode in rows] == [0.4, 0.8, 2.0, 1.0]
    alone = {"verify": {"tokens_per_second": 5.0}}
    assert speedups(alone) == {} and "speedup" not in alone["verify"]  # nothing plain to compare with


def test_decode_ratios_divide_by_the_plain_mode_that_decoded_faster():
    """End to end hf is faster (ar's prompt was slower, say); after the prompt ar decodes faster: each
    ratio picks its own plain baseline, and the table and JSON say which."""
    from tjdkit.bench import speedups

    rates = [("ar", 10.0, 30.0), ("hf", 20.0, 25.0), ("verify", 50.0, 90.0), ("lookup", 25.0, 45.0)]
    rows = {mode: {"tokens_per_second": e2e, "decode_tokens_per_second": decode} for mode, e2e, decode in rates}
    assert speedups(rows) == {"speedup": "hf", "speedup_vs_lookup": "lookup",
                              "decode_speedup": "ar", "decode_speedup_vs_lookup": "lookup"}
    assert [rows[mode]["decode_speedup"] for mode in rows] == [1.0, 25 / 30, 3.0, 1.5]
    assert [rows[mode]["decode_speedup_vs_lookup"] for mode in rows] == [30 / 45, 25 / 45, 2.0, 1.0]
    assert rows["verify"]["speedup"] == 2.5  # the end-to-end ratio is untouched


def test_the_prefill_ends_when_the_prompts_last_chunk_returns():
    import torch

    from tjdkit.bench.measure import ForwardCounter
    from tjdkit.decoding.forward import hidden_states, new_cache
    from tjdkit.models import load_model

    model, _ = load_model("tiny-gemma3")
    counter = ForwardCounter(model, prompt_length=40)
    cache = new_cache(model)
    with torch.inference_mode():
        hidden_states(model, torch.arange(3, 35)[None], cache)  # 32 of the 40 prompt tokens
        assert counter.prompt_done_at is None
        hidden_states(model, torch.arange(3, 11)[None], cache)  # the last 8
        done = counter.prompt_done_at
        assert done is not None
        hidden_states(model, torch.tensor([[5]]), cache)  # decoding: the prefill's end stays where it was
    counter.close()
    assert counter.prompt_done_at == done and counter.count == 2


def test_prompts_file_plain_lines_or_json_lines(tmp_path):
    from tjdkit.bench import read_prompts_file
    from tjdkit.errors import TjdkitError

    lines = tmp_path / "p.txt"
    lines.write_text("def add(a, b):\n\n   \nThe capital of France is\n")
    assert read_prompts_file(lines) == ["def add(a, b):", "The capital of France is"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "line one\\nline two"}\n\n{"prompt": "x", "id": 2}\n')
    assert read_prompts_file(jsonl) == ["line one\nline two", "x"]
    for text, message in [("", "no prompts"), ('{"prompt": "a"}\nplain\n', ":2: not a JSON line"),
                          ('{"text": "a"}\n', ':1: no "prompt"'), (b"\xff\xfe", "not UTF-8")]:
        bad = tmp_path / "bad.txt"
        bad.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(TjdkitError, match=message):
            read_prompts_file(bad)


def test_bench_on_a_users_prompts_file(run_cli, tmp_path):
    prompts = tmp_path / "mine.txt"
    prompts.write_text("Hello, my name is\nThe capital of France is\nOnce upon a time\n")
    code, out, err = run_cli("bench", "--model", "tiny-llama", "--modes", "ar,hf,lookup", "--prompts-file", str(prompts),
                             "--max-new-tokens", "8", "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["prompts"] == 3 and result["prompts_file"] == str(prompts) and result["parity"] is True
    assert "mine.txt" in " ".join(out.split()) and result["baselines"]["speedup_vs_lookup"] == "lookup"
    code, out, err = run_cli("bench", "--model", "tiny-llama", "--modes", "ar", "--prompts-file", str(prompts),
                             "--prompts", "2", "--max-new-tokens", "4", "--json", str(tmp_path / "c.json"))
    assert code == 0, err
    assert json.loads((tmp_path / "c.json").read_text())["prompts"] == 2


def test_bench_verify_with_lookup_drafts_needs_no_head(run_cli, tmp_path):
    """tjdkit's own loop with prompt-lookup drafts: no head trained, lossless, lookup's share reported."""
    prompts = tmp_path / "repeat.txt"
    prompts.write_text("one two three four one two three four one two\n")
    code, out, err = run_cli("bench", "--model", "tiny-llama", "--modes", "ar,verify,lookup", "--drafter", "lookup",
                             "--prompts-file", str(prompts), "--max-new-tokens", "12", "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    assert "training" not in err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["head"] is None and result["drafter"] == "lookup" and result["parity"] is True
    assert result["outputs"]["verify"] == result["outputs"]["ar"] and result["modes"]["verify"]["lookup_share"] > 0


def test_a_prompt_fed_in_chunks_counts_as_one_forward():
    """tok/fwd means the same in every mode: tjdkit and transformers' greedy feed a long Gemma 3 prompt in
    window chunks, transformers' prompt lookup feeds it whole; each prefill counts once."""
    import torch

    from tjdkit.bench.run import _run_mode
    from tjdkit.models import load_model

    model, _ = load_model("tiny-gemma3")
    prompt = torch.randint(3, 200, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    runs = {mode: _run_mode(model, None, mode, prompt, 12, [-1], "lookup") for mode in ("ar", "hf", "lookup")}
    assert runs["ar"].tokens == runs["hf"].tokens == runs["lookup"].tokens
    assert runs["ar"].forwards == runs["hf"].forwards == 12  # one prefill (four chunks of 32 or fewer) + 11 steps
    assert all(0 < run.prefill_seconds < run.seconds for run in runs.values())


def test_a_head_trained_on_old_splits_is_not_reused(tmp_path, monkeypatch):
    """ShareGPT's eval split moved off the test split (version 2): a cached head chose its checkpoint on the
    test replies, so bench trains a new one rather than measure it on those very prompts."""
    from tjdkit.bench import head_cache_dir
    from tjdkit.data import sharegpt, stemp

    monkeypatch.setenv("TJDKIT_CACHE", str(tmp_path))
    assert sharegpt.SPLIT_VERSION == 2
    now = head_cache_dir("gemma3", "cp", 4, 4, "sharegpt")
    monkeypatch.setattr(sharegpt, "SPLIT_VERSION", 1)
    assert head_cache_dir("gemma3", "cp", 4, 4, "sharegpt") != now
    stemp_now = head_cache_dir("gemma3", "cp", 4, 4, "stemp")
    monkeypatch.setattr(stemp, "SPLIT_VERSION", 1, raising=False)  # version 1, stated or not, leaves a key as it was
    assert head_cache_dir("gemma3", "cp", 4, 4, "stemp") == stemp_now
