"""Shareable heads: save_pretrained / from_pretrained / push_to_hub, runs' best checkpoints as head
directories, and chat / bench taking such a directory (tiny heads, tiny models, no network)."""

import json
import os
import shutil

import pytest
import torch

from tjdkit.config import TrainRecipe
from tjdkit.errors import TjdkitError
from tjdkit.heads import HEADS, CPHead, JointHead, MPSHead, build_head
from tjdkit.recipes import from_mapping

SHAPES = {"stp": {"rank": 1, "horizon": 1}, "multihead": {"rank": 1, "horizon": 3}, "cp": {"rank": 3, "horizon": 3},
          "mps": {"rank": 2, "horizon": 3}}


def tiny_head(name="cp", **options):
    torch.manual_seed(0)
    head = build_head(name, hidden_size=8, vocab_size=24, **SHAPES[name], draft_vocab=[0, 3, 5, 7, 11, 13, 17, 23], **options)
    with torch.no_grad():  # away from the initial values, so a load that skipped a tensor would show
        for parameter in head.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return head


def same_outputs(a, b, hidden_size=8):
    torch.manual_seed(1)
    hidden = torch.randn(5, hidden_size)
    ids = a.vocab_ids if a.vocab_ids is not None else torch.arange(a.vocab_size)
    targets = ids[torch.randint(0, ids.numel(), (5, a.horizon))]
    tokens_a, q_a = a.draft(hidden)
    tokens_b, q_b = b.draft(hidden)
    return torch.equal(tokens_a, tokens_b) and torch.equal(q_a, q_b) and torch.equal(a.log_prob(hidden, targets), b.log_prob(hidden, targets))


# ---- save_pretrained / from_pretrained -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HEADS))
def test_round_trip_gives_the_same_subclass_drafts_and_log_probs(tmp_path, name):
    head = tiny_head(name)
    head.save_pretrained(tmp_path / "head", base_model="tiny-llama")
    loaded = JointHead.from_pretrained(tmp_path / "head")
    assert type(loaded) is type(head) and loaded is not head
    assert loaded.config() == head.config()
    assert torch.equal(loaded.vocab_ids, head.vocab_ids)
    assert same_outputs(head, loaded)
    untrained = build_head(**head.config())  # the same structure without the weights differs: the check has teeth
    assert not same_outputs(head, untrained)
    saved = json.loads((tmp_path / "head" / "config.json").read_text())
    assert {key: saved[key] for key in head.config()} == head.config()
    assert saved["base_model"] == "tiny-llama" and saved["tjdkit_version"] and saved["format"] == "tjdkit-joint-head"
    assert sorted(os.listdir(tmp_path / "head")) == ["README.md", "config.json", "head.safetensors"]


def test_a_subclass_loads_only_its_own_kind(tmp_path):
    tiny_head("mps").save_pretrained(tmp_path / "mps")
    assert isinstance(MPSHead.from_pretrained(tmp_path / "mps"), MPSHead)
    with pytest.raises(TjdkitError, match="holds the mps head, not cp"):
        CPHead.from_pretrained(tmp_path / "mps")


def test_metadata_survives_a_load_and_a_save_again(tmp_path):
    head = tiny_head()
    head.save_pretrained(tmp_path / "a", base_model="org/base", base_model_revision="abc123", metrics={"tau": 2.75})
    again = JointHead.from_pretrained(tmp_path / "a")
    again.save_pretrained(tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (config["base_model"], config["base_model_revision"], config["metrics"]) == ("org/base", "abc123", {"tau": 2.75})


def test_model_card_names_the_base_model_tau_and_how_to_use(tmp_path):
    head = tiny_head("cp")
    head.save_pretrained(tmp_path / "head", base_model="google/gemma-3-270m",
                         metrics={"tau": 3.61, "speedup": 1.42, "eval_nll": 2.5, "base_eval_nll": 2.0},
                         training={"dataset": "stemp", "description": "bench head"})
    card = (tmp_path / "head" / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: tjdkit" in front and "base_model: google/gemma-3-270m" in front and "- cp" in front
    assert "tokens per forward (tau) | 3.61" in card and "1.42x" in card and "2.5 (base model: 2)" in card
    assert "training data: stemp" in card
    assert f"tjdkit chat --head {tmp_path / 'head'}" in card
    assert f'JointHead.from_pretrained("{tmp_path / "head"}")' in card and "tjdkit.attach_head(model, head)" in card
    # a tjdkit model name is not a hub id: the front matter names the hub model it comes from, or none
    head.save_pretrained(tmp_path / "g", base_model="gemma3")
    assert "base_model: google/gemma-3-270m" in (tmp_path / "g" / "README.md").read_text()
    head.save_pretrained(tmp_path / "t", base_model="tiny-llama")
    card = (tmp_path / "t" / "README.md").read_text()
    assert "base_model:" not in card.split("---")[1] and "`tiny-llama`" in card and "not measured" in card


# ---- refusals and atomic writes -------------------------------------------------------------------


def test_unknown_hub_id_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TjdkitError) as caught:
        JointHead.from_pretrained("nobody-here/no-such-head")
    assert "no-such-head" in str(caught.value) and "offline" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(TjdkitError, match="head directory not found"):
        JointHead.from_pretrained("./no/such/head")


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    head_dir = tmp_path / "head"
    tiny_head().save_pretrained(head_dir)
    (head_dir / "head.safetensors").unlink()
    torch.save({"payload": RunsCode()}, head_dir / "pytorch_model.bin")
    with pytest.raises(TjdkitError, match="refusing .*pytorch_model.bin: pickled"):
        JointHead.from_pretrained(head_dir)
    with pytest.raises(TjdkitError, match="refusing .*pytorch_model.bin: pickled"):
        JointHead.from_pretrained(head_dir / "pytorch_model.bin")
    assert not (tmp_path / "pwned").exists()


def test_a_failed_save_leaves_nothing_behind_and_keeps_the_old_head(tmp_path, monkeypatch):
    from tjdkit.heads import hub

    def broken_card(*args, **kwargs):
        raise RuntimeError("disk trouble while writing the card")

    head = tiny_head()
    monkeypatch.setattr(hub, "model_card", broken_card)
    with pytest.raises(RuntimeError):
        head.save_pretrained(tmp_path / "new")
    assert os.listdir(tmp_path) == []  # no target, no temp directory
    monkeypatch.undo()
    head.save_pretrained(tmp_path / "old", base_model="first")
    before = {name: (tmp_path / "old" / name).read_bytes() for name in os.listdir(tmp_path / "old")}
    monkeypatch.setattr(hub, "model_card", broken_card)
    with pytest.raises(RuntimeError):
        tiny_head("mps").save_pretrained(tmp_path / "old", base_model="second")
    assert {name: (tmp_path / "old" / name).read_bytes() for name in os.listdir(tmp_path / "old")} == before
    assert os.listdir(tmp_path) == ["old"]


def test_save_refuses_to_replace_a_directory_that_is_not_a_head(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TjdkitError, match="not a head directory"):
        tiny_head().save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---- push_to_hub ------------------------------------------------------------------------------------


class FakeApi:
    """Records what push_to_hub asks of the hub, and copies the folder it uploads."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        FakeApi.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, FakeApi.uploaded)
        return "commit-info"


def test_push_to_hub_uploads_the_head_directory(tmp_path, monkeypatch):
    import huggingface_hub

    from tjdkit.heads import hub

    FakeApi.calls, FakeApi.uploaded = [], tmp_path / "uploaded"
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    head = tiny_head("mps")
    result = head.push_to_hub("someone/tiny-mps", private=True, base_model="tiny-llama", metrics={"tau": 1.9})
    assert result == "commit-info"
    assert [(kind, repo) for kind, repo, _ in FakeApi.calls] == [("create_repo", "someone/tiny-mps"), ("upload_folder", "someone/tiny-mps")]
    assert FakeApi.calls[0][2]["private"] is True and FakeApi.calls[0][2]["exist_ok"] is True
    assert sorted(os.listdir(FakeApi.uploaded)) == ["README.md", "config.json", "head.safetensors"]
    assert same_outputs(head, JointHead.from_pretrained(FakeApi.uploaded))
    card = (FakeApi.uploaded / "README.md").read_text()
    assert "tjdkit chat --head someone/tiny-mps" in card and "1.9" in card


def test_push_to_hub_offline_is_one_line_and_calls_nothing(monkeypatch):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TjdkitError, match="unreachable") as caught:
        tiny_head().push_to_hub("someone/tiny-cp")
    assert "\n" not in str(caught.value) and FakeApi.calls == []
    with pytest.raises(TjdkitError, match="owner/name"):
        tiny_head().push_to_hub("./local/dir")


# ---- training runs, chat and bench ------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tjdkit.training.heads import train

    recipe = from_mapping(TrainRecipe, {
        "model": {"name": "tiny-llama"},
        "head": {"name": "cp", "rank": 2, "horizon": 3, "draft_vocab": 128},
        "data": {"train_size": 32, "eval_size": 8},
        "train": {"max_steps": 4, "batch_size": 8, "lr": 3e-3, "eval_every": 2, "save_every": 2},
    }, "test")
    directory = tmp_path_factory.mktemp("runs") / "run"
    train(recipe, directory)
    return directory


@pytest.fixture(scope="module")
def shared_dir(run_dir, tmp_path_factory):
    """The run's best head, saved as a plain head directory (no checkpoint.json, no run around it)."""
    directory = tmp_path_factory.mktemp("shared") / "head"
    JointHead.from_pretrained(run_dir / "best").save_pretrained(directory)
    return directory


def test_a_runs_best_checkpoint_is_a_head_directory(run_dir):
    from tjdkit.training.runs import load_run

    run = load_run(run_dir)
    head = JointHead.from_pretrained(run_dir / "best")
    assert isinstance(head, CPHead) and head.config() == run.head.config()
    assert same_outputs(run.head, head, hidden_size=64)
    info = json.loads((run_dir / "best" / "checkpoint.json").read_text())
    card = (run_dir / "best" / "README.md").read_text()
    assert "`tiny-llama`" in card and f"{info['eval_nll']:.3g}" in card and "training data: stemp" in card
    assert head.hub_info["base_model"] == "tiny-llama" and head.hub_info["metrics"]["base_eval_nll"] > 0


def test_a_run_in_the_older_layout_still_loads(run_dir, tmp_path):
    from tjdkit.training.runs import load_run

    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    for which in ("best", "last"):
        (old / which / "config.json").unlink()
        (old / which / "README.md").unlink()
    assert same_outputs(load_run(run_dir).head, load_run(old).head, hidden_size=64)


def test_load_run_takes_a_head_directory_and_refuses_a_model_of_another_size(shared_dir):
    from tjdkit.training.runs import load_run

    run = load_run(shared_dir)
    assert run.info["model"] == "tiny-llama" and run.head.config() == JointHead.from_pretrained(shared_dir).config()
    with pytest.raises(TjdkitError) as caught:
        load_run(shared_dir, model_name="tiny-gpt2")  # vocabulary 509, not 512
    message = str(caught.value)
    assert "vocabulary 512" in message and "tiny-gpt2" in message and "vocabulary 509" in message and "\n" not in message


def test_chat_head_takes_a_head_directory_and_its_base_model(run_cli, shared_dir):
    args = ("--prompt", "What is 3°C in Fahrenheit?", "-t", "0", "-n", "12")
    code, plain, err = run_cli("chat", "--model", "tiny-llama", "--format", "raw", *args)
    assert code == 0, err
    code, out, err = run_cli("chat", "--head", str(shared_dir), "--format", "raw", *args)
    assert code == 0, err
    assert plain.strip() and out == plain and "tau" in err  # verify is lossless: the base model's own greedy reply


def test_chat_head_refuses_a_pickled_head(run_cli, tmp_path):
    head_dir = tmp_path / "head"
    tiny_head().save_pretrained(head_dir, base_model="tiny-llama")
    (head_dir / "head.safetensors").rename(head_dir / "head.pt")
    code, _out, err = run_cli("chat", "--head", str(head_dir), "--prompt", "Hi")
    assert code == 2 and "refusing" in err and "Traceback" not in err


def test_bench_head_dir_takes_a_head_directory(run_cli, shared_dir, tmp_path):
    code, _out, err = run_cli("bench", "--head-dir", str(shared_dir), "--prompts", "1", "--max-new-tokens", "6",
                             "--modes", "ar,verify", "--drafter", "head", "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["model"] == "tiny-llama" and result["head"]["name"] == "cp" and result["head"]["horizon"] == 3
    assert result["parity"] is True and result["outputs"]["verify"] == result["outputs"]["ar"]


def test_bench_card_writes_the_measured_tau_and_speedup_into_the_card(run_cli, shared_dir, tmp_path):
    import shutil

    directory = tmp_path / "measured"
    shutil.copytree(shared_dir, directory)
    code, out, err = run_cli("bench", "--head-dir", str(directory), "--prompts", "1", "--max-new-tokens", "6",
                             "--modes", "ar,verify", "--drafter", "head", "--card", "--json", str(tmp_path / "b.json"))
    assert code == 0, err
    verify = json.loads((tmp_path / "b.json").read_text())["modes"]["verify"]
    metrics = json.loads((directory / "config.json").read_text())["metrics"]
    assert metrics["tau"] == pytest.approx(verify["tau"]) and metrics["speedup"] == pytest.approx(verify["speedup"])
    assert "tjdkit bench: 1 prompts" in metrics["measured_on"]
    card = (directory / "README.md").read_text()
    assert f"| tokens per forward (tau) | {verify['tau']:.3g} |" in card and "not measured (" not in card
    assert same_outputs(JointHead.from_pretrained(directory), JointHead.from_pretrained(shared_dir), hidden_size=64)


def test_from_pretrained_of_a_run_directory_loads_its_best_head(run_dir):
    from tjdkit.training.runs import load_run

    assert same_outputs(JointHead.from_pretrained(run_dir), load_run(run_dir).head, hidden_size=64)


def test_a_hub_id_resolves_through_the_hub_cache_safetensors_only(run_cli, shared_dir, monkeypatch):
    """Offline, a cached hub head loads (snapshot_download stands in for the cache), for Python and for chat."""
    import fnmatch

    import huggingface_hub

    calls = []

    def cached_snapshot(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(shared_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cached_snapshot)
    head = JointHead.from_pretrained("someone/tiny-cp", revision="v1")
    assert same_outputs(head, JointHead.from_pretrained(shared_dir), hidden_size=64)
    repo_id, kwargs = calls[0]
    assert repo_id == "someone/tiny-cp" and kwargs["revision"] == "v1" and kwargs["local_files_only"] is True
    patterns = kwargs["allow_patterns"]
    assert any(fnmatch.fnmatch("head.safetensors", p) for p in patterns)
    assert not any(fnmatch.fnmatch(name, p) for p in patterns for name in ("pytorch_model.bin", "head.pt", "x.pkl"))
    code, out, err = run_cli("chat", "--head", "someone/tiny-cp", "--prompt", "Hi", "-t", "0", "-n", "4")
    assert code == 0 and out.strip() and "tau" in err, err
