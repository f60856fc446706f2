"""`tjdkit train` and `tjdkit eval` as a user runs them: results, errors, kill and resume, two processes."""

import json
import os
import subprocess
import sys

import pytest

from tests.processes import sigkill_once_exists

SMALL = ["--set", "data.train_size=48", "--set", "data.eval_size=8", "--set", "train.batch_size=8",
         "--set", "train.eval_every=3", "--set", "train.save_every=3"]


def train_args(out, *extra):
    return ["train", "tiny-stemp", "--out", str(out), *SMALL, *extra]


def test_train_then_eval_end_to_end(run_cli, tmp_path):
    code, out, err = run_cli(*train_args(tmp_path / "run", "--set", "train.max_steps=6", "--json", str(tmp_path / "t.json")))
    assert code == 0, err
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["steps"] == 6 and summary["eval_nll"] > 0
    for name in ("recipe.yaml", "metrics.jsonl", "best/head.safetensors", "last/checkpoint.json", "last/trainer_state.safetensors", "last/trainer_state.json"):
        assert (tmp_path / "run" / name).is_file(), name

    code, out, err = run_cli("eval", str(tmp_path / "run"), "--limit", "3", "--max-new-tokens", "8", "--json", str(tmp_path / "e.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert list(result["modes"]) == ["ar", "draft", "verify"] and result["examples"] == 3
    assert result["modes"]["draft"]["tokens_per_forward"] > 1.0  # a horizon-2 head drafts 2 tokens per forward
    assert result["modes"]["verify"]["accuracy"] == result["modes"]["ar"]["accuracy"]
    assert result["nll"]["head"] > 0 and len(result["acceptance"]["by_position"]) == 1  # H-1 draft positions
    assert result["modes"]["verify"]["tau"] == result["acceptance"]["tau"]  # the same steps, measured two ways
    assert "verify acceptance" in out


def test_eval_of_a_plain_model_scores_ar_only(run_cli, tmp_path):
    code, _, err = run_cli("eval", "tiny-llama", "--limit", "2", "--max-new-tokens", "4", "--json", str(tmp_path / "e.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "e.json").read_text())
    assert list(result["modes"]) == ["ar"] and "head" not in result["nll"] and "acceptance" not in result


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "tiny-stemp", "--head", "tensor"], "head.name"),
        (["train", "tiny-stemp", "--rank", "0"], "head.rank"),
        (["train", "tiny-stemp", "--horizon", "0"], "head.horizon"),
        (["train", "tiny-stemp", "--head", "stp", "--horizon", "2"], "stp head predicts one token"),
        (["train", "no-such-recipe"], "unknown recipe"),
        (["train", "chat"], "'chat' recipe, not a 'train' one"),
        (["eval", "./no/such/run"], "path not found"),
        (["eval", "tiny-llama", "--modes", "beam"], "unknown mode"),
        (["eval", "tiny-llama", "--modes", "verify"], "needs a trained head"),
        (["eval", "tiny-llama", "--modes", "draft"], "needs a trained head"),
        (["eval", "tiny-llama", "--dataset", "gsm8k", "--limit", "1"], "offline"),
        (["eval", "tiny-llama", "--dataset", "nope"], "unknown dataset"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(run_cli, tmp_path, args, message):
    code, _, err = run_cli(*args, *(["--out", str(tmp_path / "r")] if args[0] == "train" else []))
    assert code == 2, err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(run_cli, tmp_path):
    code, _, err = run_cli(*train_args(tmp_path / "empty", "--resume"))
    assert code == 2 and "nothing to resume" in err
    assert run_cli(*train_args(tmp_path / "run", "--set", "train.max_steps=3"))[0] == 0
    code, _, err = run_cli(*train_args(tmp_path / "run", "--set", "train.max_steps=3"))
    assert code == 2 and "already holds a run" in err


def test_corrupt_checkpoint_fails_cleanly(run_cli, tmp_path):
    assert run_cli(*train_args(tmp_path / "run", "--set", "train.max_steps=3"))[0] == 0
    for which in ("best", "last"):
        (tmp_path / "run" / which / "head.safetensors").write_bytes(b"not safetensors")
    code, _, err = run_cli("eval", str(tmp_path / "run"), "--limit", "1")
    assert code == 2 and "corrupt" in err and len(err.strip().splitlines()) == 1


def test_sigkill_mid_run_then_resume_finishes_cleanly(tmp_path):
    """Kill a real training process after its first checkpoint; --resume completes the run."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tjdkit", *train_args(out, "--set", "train.max_steps=60", "--set", "train.eval_every=1000")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sigkill_once_exists(process, out / "last" / "checkpoint.json")
    killed_at = json.loads((out / "last" / "checkpoint.json").read_text())["step"]
    assert killed_at < 60
    done = subprocess.run(command + ["--resume", "--json", str(tmp_path / "t.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "t.json").read_text())
    assert summary["resumed_from"] >= killed_at and summary["steps"] == 60
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_two_process_cpu_run_with_accelerate_launch(tmp_path):
    """The documented multi-process path: accelerate launch -m tjdkit train ... (gloo on CPU)."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tjdkit",
               *train_args(tmp_path / "run", "--set", "train.max_steps=4")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]  # written once, by rank 0
    assert all(line["processes"] == 2 for line in lines)
    assert done.stdout.count("final loss") == 1  # only rank 0 prints the summary


def test_grad_accum_and_report_to_tensorboard_from_the_command_line(run_cli, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    code, out, err = run_cli(*train_args(run, "--set", "train.max_steps=2", "--set", "train.batch_size=4", "--grad-accum", "3",
                                         "--report-to", "tensorboard", "--json", "-"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["settings"]["effective_batch"] == 12 and "effective batch 12 (batch 4 x 3 micro-batches" in err
    assert summary["settings"]["recipe"]["train"]["report_to"] == "tensorboard"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["effective_batch"] for line in lines] == [12, 12]  # metrics.jsonl stays
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    code, _, err = run_cli(*train_args(run, "--set", "train.max_steps=3", "--set", "train.batch_size=4", "--grad-accum", "3",
                                       "--report-to", "tensorboard", "--resume"))
    assert code == 0, err  # the tracker's files do not make the run directory look foreign


def test_report_to_none_writes_no_tracker_files(run_cli, tmp_path):
    code, _, err = run_cli(*train_args(tmp_path / "run", "--set", "train.max_steps=1", "--report-to", "none"))
    assert code == 0, err
    assert not (tmp_path / "run" / "tensorboard").exists() and not (tmp_path / "run" / "wandb").exists()
