"""`tjdkit chat --head RUN`: replies decoded with a trained joint head, as a user runs it."""

import pytest

from tjdkit.config import GenerationSection, TrainRecipe
from tjdkit.recipes import load_recipe

SMALL = ["data.train_size=48", "data.eval_size=8", "train.max_steps=6", "head.horizon=3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tjdkit.training.heads import train

    directory = tmp_path_factory.mktemp("runs") / "tiny"
    train(load_recipe("tiny-stemp", TrainRecipe, SMALL), directory)
    return directory


def test_verify_reply_equals_the_plain_models_reply(run_dir):
    """Greedy, with the chat recipe's repetition penalty: tjdkit's verify vs transformers' generate."""
    from tjdkit.chat import ChatSession
    from tjdkit.training.runs import load_run

    run = load_run(run_dir)
    generation = GenerationSection(max_new_tokens=40, temperature=0.0, repetition_penalty=1.15)
    prompt = "[QUESTION]\nWhat is 21°C in Fahrenheit?\n[ANSWER]"
    plain = ChatSession(run.model, run.tokenizer, generation, chat_format="raw").reply(prompt)
    streamed: list[str] = []
    session = ChatSession(run.model, run.tokenizer, generation, chat_format="raw", head=run.head)
    with_head = session.reply(prompt, on_text=streamed.append)
    assert with_head.text == plain.text and with_head.tokens == plain.tokens > 0
    assert "".join(streamed) == with_head.text
    stats = with_head.stats
    assert stats.mode == "verify" and stats.forwards == 1 + len(stats.accepted) and stats.tau >= 1.0


def test_chat_head_cli_prints_the_reply_and_decoding_stats(run_cli, run_dir):
    code, out, err = run_cli("chat", "--head", str(run_dir), "--prompt", "What is 3°C in Fahrenheit?", "-t", "0", "-n", "24")
    assert code == 0, err
    assert out.strip() and "tau" in err and "acceptance by position" in " ".join(err.split())  # the line may wrap
    code, out, err = run_cli("chat", "--head", str(run_dir), "--head-mode", "draft", "--prompt", "Hi", "-n", "8")
    assert code == 0, err
    assert "draft, lossy" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--head", "./no/such/run"], "run directory not found"),
        (["--head", "{run}", "--model", "tiny-gpt2"], "was trained on tiny-llama"),
        (["--head", "{run}", "--head-mode", "beam"], "chat.head_mode"),
    ],
)
def test_chat_head_user_errors(run_cli, run_dir, args, message):
    args = [arg.format(run=run_dir) for arg in args]
    code, out, err = run_cli("chat", *args, "--prompt", "Hi")
    assert code == 2 and message in err and "Traceback" not in err


def test_readme_python_example_runs_on_a_trained_run(run_dir, capsys):
    """The README's "Python API" example, as written, with its run directory pointed at this run."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'tjdkit.load_run("runs/tiny-stemp")' in code and "assert tokens == plain" in code
    exec(compile(code.replace("runs/tiny-stemp", str(run_dir)), "README.md", "exec"), {})  # noqa: S102
    assert "tau" in capsys.readouterr().out
