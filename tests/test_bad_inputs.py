"""Bad inputs a user can give: each ends with one `error:` line and exit code 2, before any slow work,
and leaves nothing half-written. One test per cause found by the bad-input sweep of issue 14."""

import json
import os
import subprocess
import sys

import pytest

import tjdkit.cli.common as cli_common


def one_line_error(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def ends_with_error(code, err, *fragments):
    """For errors found once the work has started: the progress header, then the one error line."""
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith("error: "), err
    for fragment in fragments:
        assert fragment in last, err


@pytest.fixture
def no_slow_work(monkeypatch):
    """Fail the test if a command starts loading a model: its checks must come first."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the command loaded a model before checking its inputs")

    monkeypatch.setattr(cli_common, "load_model_with_progress", refuse)
    for module in ("tjdkit.cli.train_cmd", "tjdkit.cli.factorize_cmd"):
        monkeypatch.setattr(f"{module}.load_model_with_progress", refuse)


@pytest.fixture
def mount_tmpfs(tmp_path):
    """A small tmpfs with mount options (ro, size=...) as a real read-only place or a real full disk."""
    mounted = []

    def mount(options: str):
        target = tmp_path / f"mount{len(mounted)}"
        target.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path, mount_tmpfs):
    """A directory nobody can write to: mode bits for a normal user, a read-only mount for root."""
    if os.geteuid() != 0:
        directory = tmp_path / "ro"
        directory.mkdir()
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
    else:
        yield mount_tmpfs("ro,size=1m")


@pytest.fixture(autouse=True)
def json_flag_reset(monkeypatch):
    monkeypatch.setattr(cli_common, "_json_on_stdout", False)


# ---- files that are not what they claim ----------------------------------------------------


@pytest.mark.parametrize("command", [["chat", "--prompt", "x", "--recipe"], ["recipes", "show"], ["train"]])
def test_a_recipe_that_is_not_utf8(run_cli, tmp_path, command):
    recipe = tmp_path / "bad.yaml"
    recipe.write_bytes(b"command: chat\ndescription: caf\xe9 \xff\n")
    one_line_error(*run_cli(*command, str(recipe))[::2], "not UTF-8", "bad.yaml")


@pytest.mark.parametrize("content", [os.urandom(4096), b"GGUF" + os.urandom(4096), b"GGUF\x03\x00\x00\x00" + os.urandom(4096)])
def test_a_gguf_of_junk(run_cli, tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    one_line_error(*run_cli("chat", "--model", str(path), "--prompt", "x")[::2], "not a readable GGUF file")
    one_line_error(*run_cli("models", "convert", str(path))[::2], "not a readable GGUF file")


def fake_run(tmp_path, info):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "checkpoint.json").write_text(json.dumps(info))
    return run


@pytest.mark.parametrize("info, missing", [
    ({"model": "tiny-llama", "backbone_mode": "frozen", "backbone_weights": "base"}, "'head'"),
    ({"head": {"name": "cp"}, "backbone_mode": "frozen"}, "'model'"),
    ({"model": "tiny-llama", "head": {"name": "cp", "rank": 2}}, "bad head entry"),
    ({"model": "tiny-llama", "head": {"name": "cp", "hidden_size": 64, "vocab_size": 512, "rank": 2, "horizon": 2},
      "backbone_weights": "../../elsewhere.safetensors"}, "unknown backbone_weights"),
    ([1, 2], "not a JSON object"),
])
def test_a_checkpoint_json_without_what_it_needs(run_cli, tmp_path, info, missing):
    run = fake_run(tmp_path, info)
    (run / "best" / "head.safetensors").write_bytes(b"")
    for args in (["chat", "--head", str(run), "--prompt", "x"], ["eval", str(run)], ["bench", "--head-dir", str(run)]):
        one_line_error(*run_cli(*args)[::2], "corrupt checkpoint", missing)


def write_tiny_model_dir(directory):
    from transformers.utils import logging as hf_logging

    from tjdkit.models import load_model

    hf_logging.disable_progress_bar()  # its bar would land in the stderr the test reads

    model, tokenizer = load_model("tiny-llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_model_directory_with_pickled_weights_or_custom_code(run_cli, tmp_path):
    import torch
    from safetensors.torch import load_file

    directory = write_tiny_model_dir(tmp_path / "model")
    state = load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    one_line_error(*run_cli("chat", "--model", str(directory), "--prompt", "x")[::2], "pickled weights", "pytorch_model.bin")

    directory = write_tiny_model_dir(tmp_path / "custom")
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modeling_evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').close()\n")
    one_line_error(*run_cli("chat", "--model", str(directory), "--prompt", "x")[::2], "custom model code")
    assert not (tmp_path / "pwned").exists()

    (directory / "config.json").write_text("{not json")
    one_line_error(*run_cli("chat", "--model", str(directory), "--prompt", "x")[::2], "unreadable config.json")


def test_a_model_directory_with_corrupt_weights(run_cli, tmp_path):
    directory = write_tiny_model_dir(tmp_path / "model")
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(*run_cli("chat", "--model", str(directory), "--prompt", "x")[::2], "cannot load the model")


# ---- prompts ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["chat", "--prompt", "-"], ["tnot", "-"]])
def test_stdin_that_is_not_utf8(run_cli, command):
    code, _, err = run_cli(*command, "--model", "tiny-llama", stdin=b"caf\xe9\xff")
    one_line_error(code, err, "standard input is not UTF-8", "0xe9")


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("command", [["chat", "-t", "0", "--prompt"], ["tnot", "--max-new-tokens", "4"]])
def test_a_prompt_longer_than_the_context_is_refused(run_cli, model, command):
    prompt = "water boils at hundred degrees " * 400  # > 1024 tokens on the tiny tokenizers
    one_line_error(*run_cli(*command, prompt, "--model", model)[::2], "this model reads at most 1024")


def test_generation_stops_at_the_end_of_the_context():
    import torch

    from tjdkit.decoding import generate
    from tjdkit.errors import TjdkitError
    from tjdkit.heads import build_head
    from tjdkit.models import load_model
    from tjdkit.tnot import tnot_generate

    model, _ = load_model("tiny-gpt2")
    limit = model.config.max_position_embeddings
    prompt = torch.randint(3, 100, (1, limit - 5))
    tokens, _ = generate(model, prompt, max_new_tokens=50)
    assert len(tokens) == 5  # the positions left, not a crash past the position table
    head = build_head("cp", hidden_size=model.config.hidden_size, vocab_size=model.config.vocab_size, rank=2, horizon=3)
    tokens, _ = generate(model, prompt, mode="verify", head=head, max_new_tokens=50)
    assert len(tokens) <= 5
    (result,) = tnot_generate(model, prompt, max_new_tokens=50)
    assert len(result.tokens) <= 5
    with pytest.raises(TjdkitError, match="reads at most"):
        generate(model, torch.randint(3, 100, (1, limit)), max_new_tokens=1)


# ---- values ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(run_cli, value):
    one_line_error(*run_cli("chat", "--model", "tiny-llama", "--set", f"generation.temperature={value}", "--prompt", "x")[::2],
                   "generation.temperature", "finite")


def test_eval_temperature_nan(run_cli):
    one_line_error(*run_cli("eval", "tiny-hyformer", "--dataset", "smiles", "--temperature", "nan")[::2], "--temperature")


@pytest.mark.parametrize("command", [["train", "tiny-stemp", "--rank", "1000000000"],
                                     ["bench", "--model", "tiny-llama", "--rank", "1000000000"]])
def test_a_rank_larger_than_memory(run_cli, monkeypatch, no_slow_work, command):
    monkeypatch.setattr("tjdkit.heads.base.available_memory", lambda: 8 * 2**30)  # the same on any machine
    one_line_error(*run_cli(*command)[::2], "more than the 8.0 GiB of memory available")


def test_eval_smiles_on_a_joint_head_run_is_refused(run_cli, tmp_path):
    run = fake_run(tmp_path, {"model": "tiny-llama", "backbone_mode": "frozen",
                              "head": {"name": "cp", "hidden_size": 64, "vocab_size": 512, "rank": 2, "horizon": 2}})
    one_line_error(*run_cli("eval", str(run), "--dataset", "smiles")[::2], "a joint-head run on a model that is not a Hyformer")
    one_line_error(*run_cli("eval", "tiny-llama", "--dataset", "smiles")[::2], "not a Hyformer")


# ---- where outputs go --------------------------------------------------------------------


def test_json_dash_writes_to_stdout_and_tables_to_stderr(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("recipes", "ls", "--json", "-")
    assert code == 0 and not (tmp_path / "-").exists()
    assert {entry["name"] for entry in json.loads(out)} >= {"chat", "tiny-stemp"}
    assert "recipes" in err


def test_dash_is_only_for_json(run_cli):
    one_line_error(*run_cli("tnot", "x", "--model", "tiny-llama", "--record", "-")[::2], "--record needs a file path")


def test_writing_through_a_link_or_to_a_device_never_replaces_them(tmp_path):
    from tjdkit.fileio import atomic_write_text

    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"

    device = tmp_path / "null"
    device.symlink_to("/dev/null")
    atomic_write_text(device, "into the void")
    assert device.is_symlink() and os.path.exists("/dev/null") and not os.path.isfile("/dev/null")

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    atomic_write_text(fifo, "through a pipe")
    assert reader.communicate(timeout=10)[0] == b"through a pipe"
    assert not fifo.is_file()


def test_json_into_a_subprocess_stdout_link(tmp_path):
    """`--json /dev/stdout` as root: the JSON reaches the pipe and /dev/stdout stays a link."""
    result = subprocess.run([sys.executable, "-m", "tjdkit", "recipes", "ls", "--json", "/dev/stdout"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"name": "chat"' in result.stdout and os.path.islink("/dev/stdout")


@pytest.mark.parametrize("flag", ["--json", "--plot", "--record"])
def test_outputs_that_cannot_be_files(run_cli, tmp_path, flag):
    (tmp_path / "file").write_text("x")
    suffix = ".png" if flag == "--plot" else ".json"
    (tmp_path / f"dir{suffix}").mkdir()
    for path, message in ((tmp_path / f"dir{suffix}", "is a directory"), (tmp_path / "file" / f"under{suffix}", "is not a directory")):
        one_line_error(*run_cli("tnot", "x", "--model", "tiny-llama", flag, str(path))[::2], message)


def test_outputs_in_a_read_only_place_fail_before_any_work(run_cli, read_only_dir, no_slow_work):
    out = read_only_dir / "out"
    one_line_error(*run_cli("train", "tiny-stemp", "--out", str(out))[::2], f"cannot write {out}")
    one_line_error(*run_cli("factorize", "tiny-llama", "--out", str(out))[::2], f"cannot write {out}")
    one_line_error(*run_cli("recipes", "cp", "chat", str(out / "my.yaml"))[::2], "cannot write")
    one_line_error(*run_cli("tnot", "x", "--model", "tiny-llama", "--json", str(out / "r.json"))[::2], "cannot write")
    one_line_error(*run_cli("bench", "--model", "tiny-llama", "--modes", "ar", "--plot", str(read_only_dir / "p.png"))[::2],
                   "cannot write")


def test_train_out_naming_a_file(run_cli, tmp_path, no_slow_work):
    (tmp_path / "taken").write_text("mine")
    one_line_error(*run_cli("train", "tiny-stemp", "--out", str(tmp_path / "taken"))[::2], "is not a directory")
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(run_cli, mount_tmpfs, monkeypatch):
    full = mount_tmpfs("size=96k")
    code, _, err = run_cli("train", "tiny-stemp", "--out", str(full / "run"), "--set", "train.max_steps=2",
                           "--set", "data.train_size=8", "--set", "data.eval_size=4")
    ends_with_error(code, err, "No space left on device")  # after the training header: the disk filled while saving
    assert not list(full.rglob(".*.tmp*"))

    from tjdkit.errors import TjdkitError
    from tjdkit.fileio import atomic_write_text

    with pytest.raises(TjdkitError, match="No space left"):
        atomic_write_text(full / "big.txt", "x" * 200_000)
    assert [p.name for p in full.iterdir() if p.name.startswith(".big")] == []


def test_not_enough_room_for_a_factorized_model(run_cli, mount_tmpfs):
    small = mount_tmpfs("size=64k")
    one_line_error(*run_cli("factorize", "tiny-llama", "--out", str(small / "f"), "--eval-tokens", "0")[::2],
                   "not enough disk space")


# ---- more causes the sweep found -------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["chat", "--model", "tiny-llama", "--device", "meta", "--prompt", "x"], "unknown device 'meta'"),
    (["train", "tiny-stemp", "--set", "model.device=meta"], "unknown device 'meta'"),
    (["chat", "--model", "tiny-llama", "--seed", "100000000000000000000000", "--prompt", "x"], "generation.seed"),
    (["chat", "--model", "tiny-llama", "--prompt", "caf\udce9"], "the prompt is not UTF-8 text (byte 0xe9"),
    (["chat", "--model", "tiny-llama", "--system", "\udcff", "--prompt", "x"], "--system is not UTF-8"),
    (["tnot", "--model", "tiny-llama", "caf\udce9"], "not UTF-8"),
    (["train", "tiny-stemp", "--set", "train.lr=.inf"], "train.lr"),
    (["eval", "tiny-llama", "--modes", ""], "unknown mode"),
    (["train", "tiny-stemp", "--out", ""], "--out is empty"),
    (["factorize", "tiny-llama", "--out", " "], "--out is empty"),
    (["bench", "--model", "tiny-llama", "--modes", "ar", "--dataset", "smiles"], "no bench recipe for dataset 'smiles'"),
])
def test_more_bad_values(run_cli, no_slow_work, args, message):
    one_line_error(*run_cli(*args)[::2], message)


def test_a_repl_line_that_is_not_utf8_is_reported_and_the_session_goes_on(run_cli):
    code, out, err = run_cli("chat", "--model", "tiny-llama", "-t", "0", "-n", "3", stdin="hi \udcff\nhello\n/exit\n")
    assert code == 0 and "Traceback" not in err
    assert "error: that line is not UTF-8 text (byte 0xff" in err


def test_train_into_a_directory_of_other_files(run_cli, tmp_path, no_slow_work, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    one_line_error(*run_cli("train", "tiny-stemp", "--out", ".")[::2], "holds other files, not a run")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_hyformer_init_from_another_kind_of_model(run_cli, tmp_path):
    pytest.importorskip("rdkit")
    directory = write_tiny_model_dir(tmp_path / "llama")
    one_line_error(*run_cli("train", "hyformer-smiles", "--set", f"hyformer.init={directory}", "--out", str(tmp_path / "r"))[::2],
                   "is a llama, not a Hyformer")
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tjdkit.config import TrainRecipe
    from tjdkit.recipes import load_recipe
    from tjdkit.training.heads import train

    run = tmp_path_factory.mktemp("runs") / "run"
    train(load_recipe("tiny-stemp", TrainRecipe, ["train.max_steps=2", "data.train_size=8", "data.eval_size=4"]), run)
    return run


def test_resume_with_another_head_or_model(run_cli, tiny_run, no_slow_work):
    one_line_error(*run_cli("train", "tiny-stemp", "--out", str(tiny_run), "--resume", "--rank", "3")[::2],
                   "cannot resume", "rank 2 (asked: 3)")
    one_line_error(*run_cli("train", "tiny-stemp", "--out", str(tiny_run), "--resume", "--model", "tiny-gpt2")[::2],
                   "cannot resume", "model tiny-llama (asked: tiny-gpt2)")


def test_a_run_whose_backbone_does_not_fit_its_model(run_cli, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for which in ("best", "last"):
        info = json.loads((run / which / "checkpoint.json").read_text())
        (run / which / "checkpoint.json").write_text(json.dumps({**info, "model": "tiny-gpt2"}))
    one_line_error(*run_cli("eval", str(run), "--limit", "1")[::2], "does not fit tiny-gpt2")


def test_max_length_that_leaves_no_answer(run_cli, tmp_path):
    out = tmp_path / "r"
    ends_with_error(*run_cli("train", "tiny-stemp", "--set", "data.max_length=8", "--out", str(out))[::2],
                    "data.max_length 8 ends every training example inside its prompt")
    assert not out.exists() or not any(out.iterdir())
