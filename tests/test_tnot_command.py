"""`tjdkit tnot` and `tjdkit chat --tnot` end to end on tiny models: outputs, files, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tjdkit.config import PromptsSection, TnotRecipe
from tjdkit.recipes import load_recipe


def test_prompts_print_traces_and_write_record_plot_and_json(run_cli, tmp_path):
    record, plot, out = tmp_path / "trace.jsonl", tmp_path / "trace.png", tmp_path / "tnot.json"
    code, stdout, err = run_cli("tnot", "-m", "tiny-llama", "Hello", "What is 3 C in F?", "--max-new-tokens", "6",
                                "--entropy-threshold", "6.2", "--record", str(record), "--plot", str(plot),
                                "--json", str(out))
    assert code == 0, err
    assert "› Hello" in stdout and "› What is 3 C in F?" in stdout
    assert "prompt CE" in stdout and "threshold 6.20" in stdout
    data = json.loads(out.read_text())
    assert [p["prompt"] for p in data["prompts"]] == ["Hello", "What is 3 C in F?"]
    assert data["recipe"]["tnot"]["entropy_threshold"] == 6.2
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(lines) == sum(p["new_tokens"] for p in data["prompts"])
    assert {line["prompt"] for line in lines} == {0, 1}
    assert {"position", "token", "text", "entropy", "threshold", "reflected"} <= set(lines[0])
    assert plot.read_bytes().startswith(b"\x89PNG")
    (tnot_row,) = data["summary"]
    assert tnot_row["mode"] == "tnot" and tnot_row["prompt_ce_after"] < tnot_row["prompt_ce_before"]


def test_compare_on_a_dataset_reports_both_modes(run_cli, tmp_path):
    out = tmp_path / "compare.json"
    code, stdout, err = run_cli("tnot", "-m", "tiny-llama", "--dataset", "stemp", "--limit", "2", "--max-new-tokens",
                                "5", "--compare", "--show", "1", "--json", str(out))
    assert code == 0, err
    plain, tnot = json.loads(out.read_text())["summary"]
    assert (plain["mode"], tnot["mode"]) == ("plain", "tnot")
    assert plain["prompts"] == tnot["prompts"] == 2
    assert plain["accuracy"] == 0.0 and tnot["accuracy"] == 0.0  # a random tiny model, scored all the same
    assert tnot["latency_ratio"] == pytest.approx(tnot["seconds"] / plain["seconds"])
    assert stdout.count("› [QUESTION]") == 1  # --show 1
    assert "plain" in stdout and "tnot" in stdout


def test_no_optimisation_and_no_trigger_equals_the_plain_model(run_cli, tmp_path):
    out = tmp_path / "same.json"
    code, _, err = run_cli("tnot", "-m", "tiny-gemma3", "--dataset", "stemp", "--limit", "2", "--max-new-tokens", "8",
                           "--steps", "0", "--no-entropy-control", "--compare", "--json", str(out))
    assert code == 0, err
    for prompt in json.loads(out.read_text())["prompts"]:
        assert prompt["response"] == prompt["plain"]["response"]


def test_typed_prompts_keep_the_chat_templates_special_tokens():
    from tjdkit.models import load_model
    from tjdkit.tnot.run import prompt_items

    _model, tokenizer = load_model("tiny-llama")
    (item,) = prompt_items(tokenizer, ["Hello"], PromptsSection(format="gemma"))
    tokens = tokenizer.convert_ids_to_tokens(item.ids)
    assert tokens.count("<bos>") == 1 and tokens[0] == "<bos>"
    assert tokens.count("<start_of_turn>") == 2 and "<end_of_turn>" in tokens
    (raw,) = prompt_items(tokenizer, ["Hello"], PromptsSection(format="raw"))
    assert "<start_of_turn>" not in tokenizer.convert_ids_to_tokens(raw.ids)


def test_recipe_defaults_are_the_published_settings():
    config = load_recipe("tnot", TnotRecipe)
    assert config.generation.temperature == 0 and config.tnot.steps == 3 and config.tnot.entropy_threshold == 3.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["tnot", "-m", "tiny-llama"], "give a prompt"),
        (["tnot", "-m", "tiny-llama", "  "], "empty prompt"),
        (["tnot", "-m", "tiny-llama", "hi", "--dataset", "stemp"], "not both"),
        (["tnot", "-m", "tiny-llama", "hi", "--plot", "x.jpg"], "ending in .png"),
        (["tnot", "-m", "tiny-llama", "hi", "--steps", "-1"], "tnot.steps: must be >= 0"),
        (["tnot", "-m", "tiny-llama", "hi", "--entropy-weight", "2"], "tnot.entropy_weight: must be <= 1"),
        (["tnot", "-m", "tiny-llama", "--dataset", "stemp", "--split", "nope"], "unknown split 'nope'"),
        (["tnot", "-m", "tiny-llama", "--dataset", "sharegpt"], "prompts.dataset"),
        (["tnot", "-m", "tiny-llama", "--dataset", "gsm8k", "--limit", "1"], "gsm8k needs the Hugging Face hub"),
        (["tnot", "-m", "no-such-model", "hi"], "unknown model"),
        (["chat", "-m", "tiny-llama", "--entropy-threshold", "3", "--prompt", "x"], "add --tnot"),
        (["chat", "-m", "tiny-llama", "--tnot", "--head", "runs/x", "--prompt", "x"], "not both"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(run_cli, args, message):
    code, _, err = run_cli(*args)
    assert code == 2, err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1, err


def test_record_path_that_is_a_directory_is_refused_before_loading(run_cli, tmp_path):
    code, _, err = run_cli("tnot", "-m", "tiny-llama", "hi", "--record", str(tmp_path))
    assert code == 2 and "is a directory" in err


def test_chat_one_shot_with_tnot_prints_the_trace(run_cli):
    code, out, err = run_cli("chat", "-m", "tiny-llama", "--tnot", "--entropy-threshold", "3", "--steps", "2",
                             "-n", "6", "-t", "0", "--prompt", "Hello")
    assert code == 0, err
    assert out.strip()  # the reply alone on stdout
    assert "tok/s" in err and "reflection" in err and "threshold 3.00" in err


def _drive_through_a_terminal(args: list[str], lines: list[str], timeout: float = 120.0) -> str:
    """Run `tjdkit ARGS` on a pseudo-terminal, type each line at a `>>> ` prompt, then Ctrl-D."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the REPL on the terminal
        os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="120")
        os.execv(sys.executable, [sys.executable, "-m", "tjdkit", *args])
    output, typed, queue = b"", 0, [line + "\n" for line in lines] + ["\x04"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        if queue and output.count(b">>> ") > typed:
            os.write(fd, queue.pop(0).encode())
            typed += 1
    os.waitpid(pid, 0)
    return output.decode("utf-8", errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_chat_repl_with_tnot_through_a_terminal():
    text = _drive_through_a_terminal(
        ["chat", "-m", "tiny-llama", "--tnot", "--entropy-threshold", "3", "-n", "5", "-t", "0"],
        ["hello", "/trace", "hi again"],
    )
    assert "/trace shows or hides the entropy trace" in text
    assert "TNOT: 3 steps" in text
    assert text.count("tok/s") == 2
    assert text.count("reflection") >= 1 and "entropy trace off" in text
    assert "Traceback" not in text
