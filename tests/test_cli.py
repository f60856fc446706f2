"""The CLI: fast help, one-line errors with exit code 2, and the commands end to end on tiny models."""

import json
import subprocess
import sys
import time

import pytest


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys, time; t = time.time()\n"
        "from tjdkit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'tensorly') if m in sys.modules]\n"
        "print('HEAVY', heavy, time.time() - t, file=sys.stderr)\n"
    )
    started = time.time()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.time() - started
    assert "HEAVY []" in result.stderr
    assert elapsed < 3.0  # generous for loaded CI machines; ~0.3 s here
    for command in ("chat", "recipes", "models"):
        assert command in result.stdout


def test_no_arguments_prints_help(run_cli):
    code, out, _ = run_cli()
    assert code == 0 and "chat" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["chat", "--bogus"], "No such option"),
        (["recipes", "show", "nope"], "unknown recipe 'nope'"),
        (["chat", "--recipe", "nope", "--prompt", "x"], "unknown recipe"),
        (["chat", "--set", "generation.temp=3", "--prompt", "x"], "generation.temp"),
        (["chat", "--set", "oops", "--prompt", "x"], "bad --set"),
        (["chat", "--temperature", "-1", "--prompt", "x"], "generation.temperature"),
        (["chat", "--format", "fancy", "--prompt", "x"], "chat.format"),
        (["chat", "--model", "no-such-model", "--prompt", "x"], "unknown model 'no-such-model'"),
        (["chat", "--model", "./missing-dir", "--prompt", "x"], "model path not found"),
        (["chat", "--model", "missing.gguf", "--prompt", "x"], "GGUF file not found"),
        (["chat", "--model", "tiny-llama", "--prompt", "   "], "empty prompt"),
        (["models", "convert", "tiny-llama"], "nothing to convert"),
        (["chat", "--model", "tiny-gpt2", "--format", "template", "--prompt", "x"], "no chat template"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(run_cli, args, message):
    code, _, err = run_cli(*args)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1, err


def test_recipes_commands(run_cli, tmp_path):
    code, out, _ = run_cli("recipes", "ls", "--json", str(tmp_path / "r.json"))
    assert code == 0 and "chat" in out
    assert "chat" in {row["name"] for row in json.loads((tmp_path / "r.json").read_text())}
    code, out, _ = run_cli("recipes", "show", "chat")
    assert code == 0 and out.startswith("command: chat")
    code, out, _ = run_cli("recipes", "cp", "chat", str(tmp_path / "mine.yaml"))
    assert code == 0 and (tmp_path / "mine.yaml").read_text().startswith("command: chat")
    code, _, err = run_cli("recipes", "cp", "chat", str(tmp_path / "mine.yaml"))
    assert code == 2 and "already exists" in err


def test_models_ls(run_cli, tmp_path):
    code, out, _ = run_cli("models", "ls", "--json", str(tmp_path / "m.json"))
    assert code == 0 and "gemma3-270m" in out and "tiny-llama" in out
    rows = {row["name"]: row for row in json.loads((tmp_path / "m.json").read_text())}
    assert rows["gemma3-270m"]["aliases"] == ["gemma3"]
    assert rows["gemma3-270m"]["source_bytes"] > 200e6  # the bundled GGUF
    assert rows["gemma3-270m"]["cache_path"] is None  # the test cache starts empty


def test_chat_one_shot_on_a_tiny_model(run_cli):
    code, out, err = run_cli("chat", "--model", "tiny-llama", "-n", "6", "-t", "0", "--prompt", "Hello")
    assert code == 0
    assert out.endswith("\n") and out.strip()  # the reply alone on stdout
    assert "tokens" in err and "tok/s" in err  # the stats line on stderr


def test_chat_reads_the_prompt_from_stdin(run_cli):
    code, out, _ = run_cli("chat", "-m", "tiny-llama", "-n", "4", "-t", "0", "--prompt", "-", stdin="Hello\n")
    again = run_cli("chat", "-m", "tiny-llama", "-n", "4", "-t", "0", "--prompt", "Hello")
    assert code == 0 and out == again[1]


def test_chat_with_an_edited_recipe_file(run_cli, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("command: chat\nmodel:\n  name: tiny-gemma3\ngeneration:\n  max_new_tokens: 3\n  temperature: 0\n")
    code, _, err = run_cli("chat", "--recipe", str(recipe), "--prompt", "Hi")
    assert code == 0 and "3 tokens" in err


def test_repl_commands_and_eof(tmp_path):
    """Drive the real REPL through a pipe: a turn, /reset, an unknown command, then EOF."""
    script = "hello\n/reset\n/bogus\nhi again\n"
    result = subprocess.run(
        [sys.executable, "-m", "tjdkit", "chat", "-m", "tiny-llama", "-n", "5", "-t", "0"],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "history cleared" in result.stderr
    assert "unknown command /bogus" in result.stderr
    assert result.stderr.count("tok/s") == 2
    assert "Traceback" not in result.stderr


def test_repl_exit_command():
    result = subprocess.run(
        [sys.executable, "-m", "tjdkit", "chat", "-m", "tiny-llama", "-n", "3"],
        input="/exit\nnever answered\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "tok/s" not in result.stderr
