"""CLI conventions shared by every command (issue 19, part 4): JSON on stdout, full-width tables in pipes,
completion, examples in help, one meaning per short flag, --recipe, --seed, file permissions, settings."""

import json
import os
import stat

import pytest

SMALL_TRAIN = ["--set", "data.train_size=24", "--set", "data.eval_size=4", "--set", "train.batch_size=4",
               "--set", "train.max_steps=2", "--set", "train.eval_every=2", "--set", "train.save_every=2"]


def all_commands():
    """(path, click command) for every leaf command of the tjdkit tree."""
    import typer

    from tjdkit.cli import app

    found = []

    def walk(command, path):
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, path + [name])
        else:
            found.append((path, command))

    walk(typer.main.get_command(app), [])
    return found


def json_stdout(run_cli, *args):
    """Run with `--json -`: stdout must be the JSON alone."""
    code, out, err = run_cli(*args, "--json", "-")
    assert code == 0, err
    return json.loads(out), err


# -- a. --json - on every command that has --json ------------------------------------------------------------------


def test_every_json_option_accepts_stdout():
    with_json = [" ".join(path) for path, command in all_commands() if any("--json" in p.opts for p in command.params)]
    assert set(with_json) >= {"train", "eval", "chat", "bench", "factorize", "tnot", "models ls", "recipes ls"}


@pytest.mark.parametrize("args, key", [
    (["recipes", "ls"], None),
    (["models", "ls"], None),
    (["eval", "tiny-llama", "--limit", "2", "--max-new-tokens", "4"], "modes"),
    (["bench", "--model", "tiny-llama", "--modes", "ar", "--prompts", "1", "--max-new-tokens", "4", "--dataset", "stemp"], "modes"),
    (["tnot", "-m", "tiny-llama", "Hello", "--max-new-tokens", "4", "--steps", "1"], "model"),
    (["factorize", "tiny-llama", "--rank", "2x", "--eval-tokens", "0", "--calibration-tokens", "32", "--data-free"], "layers"),
    (["chat", "-m", "tiny-llama", "-n", "4", "-t", "0", "--prompt", "Hello"], "reply"),
])
def test_json_dash_is_parseable_json_on_stdout(run_cli, args, key):
    data, err = json_stdout(run_cli, *args)
    if key is None:
        assert isinstance(data, list) and data
    else:
        assert key in data
    if args[0] in ("eval", "bench", "tnot", "factorize"):
        assert err.strip()  # the table went to stderr


def test_train_json_dash(run_cli, tmp_path):
    data, err = json_stdout(run_cli, "train", "tiny-stemp", "--out", str(tmp_path / "run"), *SMALL_TRAIN)
    assert data["steps"] == 2 and "final loss" in err


# -- b. tables in a pipe are not cut at 80 columns ------------------------------------------------------------------


def test_tables_in_a_pipe_use_the_full_width(run_cli, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    code, out, err = run_cli("bench", "--model", "tiny-llama", "--modes", "ar,lookup", "--prompts", "1", "--max-new-tokens", "4",
                             "--dataset", "stemp")
    assert code == 0, err
    assert "…" not in out and max(len(line) for line in out.splitlines()) > 80
    code, out, err = run_cli("eval", "tiny-llama", "--limit", "2", "--max-new-tokens", "4")
    assert code == 0, err
    assert "…" not in out


def test_columns_is_honoured(monkeypatch):
    import io

    from tjdkit.cli.common import PIPE_WIDTH, console_width

    monkeypatch.setenv("COLUMNS", "132")
    assert console_width(io.StringIO()) == 132
    monkeypatch.delenv("COLUMNS")
    assert console_width(io.StringIO()) == PIPE_WIDTH > 80


# -- c, d. completion and examples in help ---------------------------------------------------------------------------


def test_help_offers_shell_completion(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out


@pytest.mark.parametrize("path", [path for path, _ in all_commands()], ids=" ".join)
def test_every_command_help_has_an_example(run_cli, path):
    code, out, _ = run_cli(*path, "--help")
    assert code == 0 and "Example" in out
    assert "tjdkit " + path[0] in out.split("Example", 1)[1]  # a real command line follows


# -- e. one meaning per short flag -----------------------------------------------------------------------------------


def test_each_short_flag_means_one_long_option_everywhere():
    meanings: dict[str, set] = {}
    for path, command in all_commands():
        for param in command.params:
            names = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
            longs = tuple(sorted(name for name in names if name.startswith("--")))
            for short in (name for name in names if len(name) == 2 and name.startswith("-")):
                meanings.setdefault(short, set()).add(longs)
    clashes = {short: longs for short, longs in meanings.items() if len(longs) > 1}
    assert not clashes, clashes
    assert meanings["-n"] == {("--max-new-tokens",)}  # as in llama.cpp; counts are --limit (-l)


# -- f. --recipe wherever a recipe is read ---------------------------------------------------------------------------


def test_recipes_cp_hint_works_with_train(run_cli, tmp_path):
    code, out, _ = run_cli("recipes", "cp", "tiny-stemp", str(tmp_path / "mine.yaml"))
    assert code == 0
    code, out, err = run_cli("train", "--recipe", out.strip(), "--out", str(tmp_path / "run"), *SMALL_TRAIN,
                             "--json", str(tmp_path / "t.json"))
    assert code == 0, err
    assert json.loads((tmp_path / "t.json").read_text())["steps"] == 2


@pytest.mark.parametrize("args, message", [
    (["train", "tiny-stemp", "--recipe", "tiny-stemp"], "not both"),
    (["train"], "give a recipe"),
    (["train", "--recipe", "nope.yaml"], "recipe file not found"),
    (["train", "tiny-stemp", "--report-to", "mlflow"], "train.report_to"),
    (["train", "tiny-stemp", "--grad-accum", "0"], "gradient_accumulation_steps"),
    (["train", "tiny-stemp", "--report-to", "wandb"], "pip install 'tjdkit[wandb]'"),
    (["chat", "--json", "x.json"], "add --prompt"),
    (["bench", "--model", "tiny-llama", "--modes", "ar", "--seed", "-1"], "--seed must be between 0 and"),
    (["factorize", "tiny-llama", "--seed", "99999999999999999999"], "--seed must be between 0 and"),
    (["train", "tiny-stemp", "--seed", "-3"], "train.seed"),
])
def test_recipe_and_training_flag_errors_are_one_line(run_cli, tmp_path, args, message):
    if "wandb" in args:
        pytest.importorskip("tjdkit")  # always there; the check below needs wandb absent
        import importlib.util

        if importlib.util.find_spec("wandb"):
            pytest.skip("wandb is installed here")
    code, _, err = run_cli(*args, *(["--out", str(tmp_path / "r")] if args[0] == "train" else []))
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_every_recipe_reading_command_takes_recipe():
    commands = {" ".join(path): command for path, command in all_commands()}
    for name in ("train", "chat", "tnot", "factorize"):
        assert any("--recipe" in p.opts for p in commands[name].params), name


# -- g. --seed -------------------------------------------------------------------------------------------------------


def test_every_sampling_or_training_command_has_seed():
    commands = {" ".join(path): command for path, command in all_commands()}
    for name in ("train", "bench", "factorize", "chat", "tnot", "eval"):
        assert any("--seed" in p.opts for p in commands[name].params), name


def test_same_seed_same_sampled_reply_and_the_seed_is_recorded(run_cli):
    args = ["chat", "-m", "tiny-llama", "-n", "12", "-t", "1.0", "--top-k", "0", "--prompt", "Hello"]
    first, _ = json_stdout(run_cli, *args, "--seed", "7")
    second, _ = json_stdout(run_cli, *args, "--seed", "7")
    other, _ = json_stdout(run_cli, *args, "--seed", "8")
    assert first["reply"]["text"] == second["reply"]["text"] != other["reply"]["text"]
    assert first["settings"]["seed"] == 7 and first["settings"]["recipe"]["generation"]["seed"] == 7
    unseeded, _ = json_stdout(run_cli, *args)
    assert isinstance(unseeded["settings"]["seed"], int)  # a fresh seed, recorded so the run can be repeated


def test_train_seed_overrides_the_recipe_and_repeats(run_cli, tmp_path):
    runs = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        data, _ = json_stdout(run_cli, "train", "tiny-stemp", "--out", str(tmp_path / name), *SMALL_TRAIN, "--seed", seed)
        runs.append(data)
        assert data["settings"]["recipe"]["train"]["seed"] == int(seed) == data["settings"]["seed"]
    losses = [[row["loss"] for row in map(json.loads, (tmp_path / n / "metrics.jsonl").read_text().splitlines())] for n in "abc"]
    assert losses[0] == losses[1] != losses[2]


# -- h. outputs follow the umask -------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    from tjdkit.fileio import atomic_directory, atomic_write_text

    old = os.umask(umask)
    try:
        written = atomic_write_text(tmp_path / "out.json", "{}\n")
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "weights.bin").write_bytes(b"0")
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "model" / "weights.bin").stat().st_mode) == file_mode


def test_a_run_directory_follows_the_umask(run_cli, tmp_path):
    old = os.umask(0o022)
    try:
        code, _, err = run_cli("train", "tiny-stemp", "--out", str(tmp_path / "run"), *SMALL_TRAIN)
    finally:
        os.umask(old)
    assert code == 0, err
    run = tmp_path / "run"
    for path in (run, run / "best", run / "last"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    for path in (run / "recipe.yaml", run / "metrics.jsonl", run / "settings.json", run / "last" / "checkpoint.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# -- k. resolved settings --------------------------------------------------------------------------------------------


def check_settings(settings, command, model):
    assert settings["command"] == command and settings["model"] == model
    assert isinstance(settings["seed"], int) and "dtype" in settings
    assert settings["versions"]["torch"] and settings["versions"]["python"]


def test_settings_in_json_and_next_to_results(run_cli, tmp_path):
    data, _ = json_stdout(run_cli, "train", "tiny-stemp", "--out", str(tmp_path / "run"), *SMALL_TRAIN, "--set", "head.rank=3")
    check_settings(data["settings"], "train", "tiny-llama")
    assert data["settings"]["recipe"]["head"]["rank"] == 3  # the recipe after the CLI's overrides
    assert json.loads((tmp_path / "run" / "settings.json").read_text()) == data["settings"]

    data, _ = json_stdout(run_cli, "eval", "tiny-llama", "--limit", "1", "--max-new-tokens", "3", "--seed", "4")
    check_settings(data["settings"], "eval", "tiny-llama")
    assert data["settings"]["seed"] == 4 and data["settings"]["max_new_tokens"] == 3

    data, _ = json_stdout(run_cli, "bench", "--model", "tiny-llama", "--modes", "ar", "--prompts", "1", "--max-new-tokens", "3",
                          "--dataset", "stemp")
    check_settings(data["settings"], "bench", "tiny-llama")
    assert data["settings"]["modes"] == ["ar"]

    data, _ = json_stdout(run_cli, "tnot", "-m", "tiny-llama", "Hello", "-n", "3", "--steps", "1", "--seed", "2")
    check_settings(data["settings"], "tnot", "tiny-llama")
    assert data["settings"]["recipe"]["tnot"]["steps"] == 1 and data["settings"]["recipe"]["generation"]["seed"] == 2
