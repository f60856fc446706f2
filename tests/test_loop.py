"""The shared training loop on a job of its own: a 4-weight linear regression, CPU, no model download."""

import json

import pytest
import torch
import torch.nn as nn

from tjdkit.config import TrainSection
from tjdkit.errors import TjdkitError
from tjdkit.fileio import atomic_directory, load_state_tree, save_state_tree
from tjdkit.training.loop import read_resume_state, run_loop
from tjdkit.training.runs import LEGACY_TRAINER_STATE, TRAINER_STATE

TIMING = ("tokens_per_second", "eta_seconds")


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)  # frozen: must stay out of the optimizer

    def forward(self, x):
        return self.scale * (x @ self.w)


class RegressionJob:
    """y = x @ [1, -2, 0.5, 3] on 40 examples; the loss adds noise from the torch RNG, so exact resume needs it restored."""

    score_key = "eval_mse"

    def __init__(self, scores=None):
        generator = torch.Generator().manual_seed(0)
        true = torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.x, self.eval_x = torch.randn(40, 4, generator=generator), torch.randn(16, 4, generator=generator)
        self.y, self.eval_y = self.x @ true, self.eval_x @ true
        self.module = Linear()
        self.size = 40
        self.info = {"model": "regression"}
        self.scores = iter(scores) if scores else None
        self.saves, self.calls = [], []

    def train_mode(self, module):
        self.calls.append("train_mode")
        module.train()

    def loss(self, module, step, batch_index):
        self.calls.append("loss")
        noise = 0.01 * torch.randn(len(batch_index))
        loss = ((module(self.x[batch_index]) - self.y[batch_index] - noise) ** 2).mean()
        return loss, len(batch_index), {"task": "even" if step % 2 == 0 else "odd"}

    def evaluate(self, module):
        assert not module.training
        with torch.no_grad():
            mse = ((module(self.eval_x) - self.eval_y) ** 2).mean().item()
        return {"eval_mse": next(self.scores) if self.scores else mse, "true_mse": mse}

    def save(self, directory, module, info, trainer_state):
        self.saves.append((directory.name, info["step"], trainer_state is not None))
        with atomic_directory(directory) as tmp:
            save_state_tree(tmp, "weights", module.state_dict())
            (tmp / "info.json").write_text(json.dumps(info))
            if trainer_state is not None:
                save_state_tree(tmp, TRAINER_STATE, trainer_state)

    def restore(self, directory, module):
        module.load_state_dict(load_state_tree(directory, "weights"))


SETTINGS = TrainSection(max_steps=12, batch_size=8, lr=0.3, eval_every=4, save_every=5)


def loop(job, run_dir, **kwargs):
    from accelerate import Accelerator

    return run_loop(job, SETTINGS, run_dir, "command: test\n", accelerator=Accelerator(cpu=True), **kwargs)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_every_step_is_recorded_with_the_jobs_fields(tmp_path):
    torch.manual_seed(0)
    job = RegressionJob()
    result = loop(job, tmp_path / "run", before_first_step=lambda: job.calls.append("before_first_step"))
    assert result.steps == 12 and result.resumed_from == 0
    assert job.calls == ["before_first_step"] + ["train_mode", "loss"] * 12
    lines = metrics(tmp_path / "run")
    assert [line["step"] for line in lines] == list(range(1, 13))
    assert [line["task"] for line in lines] == ["even", "odd"] * 6  # loss() saw steps 0..11
    assert [line["epoch"] for line in lines] == [0] * 5 + [1] * 5 + [2] * 2  # 40 examples, batches of 8
    assert [line["step"] for line in lines if "eval_mse" in line] == [4, 8, 12]
    evals = [line["eval_mse"] for line in lines if "eval_mse" in line]
    assert evals == sorted(evals, reverse=True) and evals[-1] < (job.eval_y**2).mean() / 10  # vs w = 0
    assert lines[-1]["loss"] < min(line["loss"] for line in lines[:4])
    assert [{k: v for k, v in line.items() if k not in TIMING} for line in result.history] == [
        {k: v for k, v in line.items() if k not in TIMING} for line in lines
    ]
    assert result.best == lines[-1]["eval_mse"] and result.last_eval == {k: lines[-1][k] for k in ("eval_mse", "true_mse")}
    assert (tmp_path / "run" / "recipe.yaml").read_text() == "command: test\n"
    assert torch.equal(job.module.scale, torch.ones(1))


def test_best_is_saved_when_the_score_improves_and_last_on_its_cadence(tmp_path):
    torch.manual_seed(0)
    job = RegressionJob(scores=[3.0, 1.0, 2.0])
    result = loop(job, tmp_path / "run")
    assert job.saves == [("best", 4, False), ("last", 5, True), ("best", 8, False), ("last", 10, True), ("last", 12, True)]
    assert json.loads((tmp_path / "run" / "best" / "info.json").read_text()) == {"model": "regression", "step": 8, "eval_mse": 1.0}
    assert json.loads((tmp_path / "run" / "last" / "info.json").read_text()) == {"model": "regression", "step": 12}
    assert not list((tmp_path / "run" / "best").glob(TRAINER_STATE + "*"))
    state = read_resume_state(tmp_path / "run")
    assert state["step"] == 12 and state["best"] == 1.0 and state["last_dir"] == tmp_path / "run" / "last"
    assert {"optimizer", "schedule", "torch_rng"} <= state.keys()
    assert result.best == 1.0 and result.last_eval["eval_mse"] == 2.0


def test_a_resumed_run_ends_bit_identical_to_an_uninterrupted_one(tmp_path):
    torch.manual_seed(0)
    straight = RegressionJob()
    loop(straight, tmp_path / "straight")

    class Killed(Exception):
        pass

    def kill_at_step_7(event):
        if event["kind"] == "step" and event["step"] == 7:
            raise Killed

    torch.manual_seed(0)
    with pytest.raises(Killed):
        loop(RegressionJob(), tmp_path / "killed", on_event=kill_at_step_7)
    assert [line["step"] for line in metrics(tmp_path / "killed")] == list(range(1, 8))
    stale = tmp_path / "killed" / ".last.tmp-999999999-x"  # a writer killed while saving (its process is gone)
    stale.mkdir()

    torch.manual_seed(1234)  # resume must put the killed run's RNG back, whatever the state now
    events, resumed = [], RegressionJob()
    result = loop(resumed, tmp_path / "killed", resume_state=read_resume_state(tmp_path / "killed"), on_event=events.append)
    assert result.resumed_from == 5 and result.steps == 12 and len(result.history) == 7
    assert events[0] == {"kind": "resume", "step": 5} and [e["step"] for e in events[1:]] == list(range(6, 13))
    assert all(e["kind"] == "step" and e["total"] == 12 for e in events[1:])
    assert torch.equal(resumed.module.w, straight.module.w)
    assert not stale.exists()
    a, b = metrics(tmp_path / "killed"), metrics(tmp_path / "straight")
    assert [line["step"] for line in a] == list(range(1, 13))  # steps 6, 7 were rewritten, not duplicated
    assert [{k: v for k, v in line.items() if k not in TIMING} for line in a] == [{k: v for k, v in line.items() if k not in TIMING} for line in b]
    a, b = read_resume_state(tmp_path / "killed"), read_resume_state(tmp_path / "straight")
    assert torch.equal(a["torch_rng"], b["torch_rng"]) and a["best"] == b["best"]
    for x, y in zip(a["optimizer"]["state"][0].values(), b["optimizer"]["state"][0].values()):
        assert torch.equal(torch.as_tensor(x), torch.as_tensor(y))


def test_resume_state_errors_are_user_errors(tmp_path):
    with pytest.raises(TjdkitError, match="nothing to resume"):
        read_resume_state(tmp_path)
    (tmp_path / "last").mkdir()
    for suffix in (".safetensors", ".json"):
        (tmp_path / "last" / f"{TRAINER_STATE}{suffix}").write_bytes(b"garbage")
    with pytest.raises(TjdkitError, match="corrupt"):
        read_resume_state(tmp_path)
    save_state_tree(tmp_path / "last", TRAINER_STATE, {"step": 3})
    with pytest.raises(TjdkitError, match="corrupt trainer state .*: no best"):
        read_resume_state(tmp_path)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_a_planted_pickle_is_never_loaded(tmp_path, monkeypatch):
    """A trainer_state.pt whose unpickling runs a command (the old format, or planted) is refused unread."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "last").mkdir()
    torch.save({"step": 1, "payload": _RunsCode()}, tmp_path / "last" / LEGACY_TRAINER_STATE)
    with pytest.raises(TjdkitError, match="is a pickle .* not read"):
        read_resume_state(tmp_path)
    assert not (tmp_path / "pwned").exists()
    # a pickle put where the safetensors/JSON state belongs is corrupt, not executed
    torch.save({"payload": _RunsCode()}, tmp_path / "last" / f"{TRAINER_STATE}.safetensors")
    (tmp_path / "last" / f"{TRAINER_STATE}.json").write_text("{}")
    with pytest.raises(TjdkitError, match="corrupt"):
        read_resume_state(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_state_tree_round_trips_exactly(tmp_path):
    tree = {
        "step": 7, "best": float("inf"), "worst": float("-inf"), "nan": float("nan"), "name": "x", "none": None, "flag": True,
        "betas": (0.9, 0.999), "lrs": [0.1, 1e-300], "int_keys": {0: {"exp_avg": torch.randn(3, dtype=torch.float64)}, 1: {}},
        "rng": torch.get_rng_state(), "scalar": torch.tensor(5.0),
    }
    save_state_tree(tmp_path, "s", tree)
    back = load_state_tree(tmp_path, "s")
    assert back.keys() == tree.keys() and back["nan"] != back["nan"]
    for key in ("step", "best", "worst", "name", "none", "flag", "betas", "lrs"):
        assert back[key] == tree[key] and type(back[key]) is type(tree[key])
    assert list(back["int_keys"]) == [0, 1] and torch.equal(back["int_keys"][0]["exp_avg"], tree["int_keys"][0]["exp_avg"])
    assert back["int_keys"][0]["exp_avg"].dtype == torch.float64
    assert torch.equal(back["rng"], tree["rng"]) and torch.equal(back["scalar"], tree["scalar"])
    with pytest.raises(TypeError):
        save_state_tree(tmp_path, "bad", {"f": lambda: 0})


class NoiselessJob(RegressionJob):
    """The regression without the loss noise: the same examples give the same gradients however they are split."""

    def loss(self, module, step, batch_index):
        loss = ((module(self.x[batch_index]) - self.y[batch_index]) ** 2).mean()
        return loss, len(batch_index), {}


def run_settings(**changes):
    import dataclasses

    return dataclasses.replace(TrainSection(max_steps=5, batch_size=8, lr=0.1, eval_every=100, save_every=100, grad_clip=0.0),
                               **changes)


def test_accumulated_micro_batches_update_like_one_big_batch(tmp_path):
    """4 micro-batches of 4 examples, accumulated, give the same weights after every step as one batch of 16."""
    from accelerate import Accelerator

    weights = {}
    for name, settings in (("big", run_settings(batch_size=16)), ("accum", run_settings(batch_size=4, gradient_accumulation_steps=4))):
        job = NoiselessJob()
        result = run_loop(job, settings, tmp_path / name, "command: test\n", accelerator=Accelerator(cpu=True))
        weights[name] = job.module.w.detach().clone()
        assert result.steps == 5 and all(record["effective_batch"] == 16 for record in result.history)
        weights[name + "_loss"] = [record["loss"] for record in result.history]
    assert torch.allclose(weights["big"], weights["accum"], atol=1e-6)
    assert weights["big_loss"] == pytest.approx(weights["accum_loss"], rel=1e-5)
    assert not torch.allclose(weights["big"], torch.zeros(4))  # it did train


def test_an_uneven_last_step_weighs_examples_equally(tmp_path):
    """40 examples, effective batch 16: the third step has 8 examples in 2 micro-batches; still equal to one batch of 8."""
    from accelerate import Accelerator

    weights = []
    for name, settings in (("big", run_settings(batch_size=16, max_steps=3)),
                           ("accum", run_settings(batch_size=4, gradient_accumulation_steps=4, max_steps=3))):
        job = NoiselessJob()
        run_loop(job, settings, tmp_path / name, "command: test\n", accelerator=Accelerator(cpu=True))
        weights.append(job.module.w.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def test_report_to_tensorboard_writes_events_and_keeps_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from accelerate import Accelerator

    from tjdkit.training.loop import tracker_options

    settings = run_settings(report_to="tensorboard")
    run_dir = tmp_path / "run"
    job = NoiselessJob()
    run_loop(job, settings, run_dir, "command: test\n", accelerator=Accelerator(cpu=True, **tracker_options(settings, run_dir)))
    assert len(metrics(run_dir)) == 5
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert [event.step for event in accumulator.Scalars("loss")] == [1, 2, 3, 4, 5]


def test_report_to_a_missing_tracker_is_one_clear_error(monkeypatch):
    import importlib.util

    from tjdkit.training.loop import check_report_to

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "tensorboard", "tensorboardX") else real(name, *a))
    with pytest.raises(TjdkitError, match=r"pip install 'tjdkit\[wandb\]'"):
        check_report_to("wandb")
    with pytest.raises(TjdkitError, match="tensorboard package"):
        check_report_to("tensorboard")
    check_report_to("none")  # nothing to check
