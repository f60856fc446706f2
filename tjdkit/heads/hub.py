"""Shareable joint heads: a head directory, the way models are shared on the Hugging Face hub.

    DIR/head.safetensors   the head's state_dict (weights and draft token ids); no pickle, so loading runs no code
    DIR/config.json        the head's config() (build_head rebuilds it) + base_model, base_model_revision,
                           tjdkit_version, format; metrics and training facts for the card
    DIR/README.md          the model card (YAML front matter: library_name: tjdkit, base_model, tags)

A training run's checkpoints (RUN/best/, RUN/last/) are head directories too: the same three
files beside checkpoint.json and the trained backbone weights.

Hand-written over `snapshot_download` / `HfApi.upload_folder` rather than PyTorchModelHubMixin: the
mixin instantiates the class it is called on (JointHead is abstract; the subclass is named in the
config), records constructor arguments (lm_head_weight is a tensor) and falls back to a pickled
pytorch_model.bin.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tjdkit.errors import TjdkitError
from tjdkit.fileio import atomic_directory, hub_reachable

WEIGHTS = "head.safetensors"
CONFIG = "config.json"
CARD = "README.md"
FORMAT = "tjdkit-joint-head"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What a head repository may hold that tjdkit reads (a run checkpoint pushed whole adds its backbone weights).
HUB_FILES = ["*.json", "*.safetensors", "*.md", "adapter/*.json", "adapter/*.safetensors"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# tjdkit model names whose weights come from a hub model: the card's base_model (the hub validates it).
HUB_BASE = {"gemma3": "google/gemma-3-270m", "gemma3-270m": "google/gemma-3-270m"}
_METADATA_KEYS = {"format", "format_version", "base_model", "base_model_revision", "tjdkit_version", "metrics", "training",
                  "lm_head_weight"}


def is_head_dir(path: str | Path) -> bool:
    """A directory whose config.json says it holds a tjdkit joint head."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


def looks_like_hub_id(text: str) -> bool:
    """owner/name, not a path a user meant locally (./x, /x, ~/x, a/b/c)."""
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "~"))


class HubMixin:
    """save_pretrained / from_pretrained / push_to_hub for JointHead (the functions below do the work)."""

    def save_pretrained(self, save_directory, *, base_model=None, base_model_revision=None, metrics=None,
                        training=None) -> Path:
        """Write a head directory (head.safetensors, config.json, README.md) atomically; returns its Path.

        base_model: the model name, path or hub id the head was trained on (what chat/bench load with it);
        metrics: e.g. {"tau": 3.6, "speedup": 1.8, "eval_nll": 2.9, "base_eval_nll": 2.0} for the card.
        Values not given are kept from the directory the head was loaded from."""
        return save_pretrained(self, save_directory, base_model=base_model, base_model_revision=base_model_revision,
                               metrics=metrics, training=training)

    @classmethod
    def from_pretrained(cls, source, revision=None, *, device="cpu"):
        """The head in a head directory or hub repository (`owner/name`, at `revision`), as its own subclass.

        Loads safetensors and JSON only (pickled weights are refused); the config's base model and
        metrics are kept in `head.hub_info`."""
        root = next(c for c in cls.__mro__ if HubMixin in c.__bases__)
        directory = resolve(source, revision)
        return load_pretrained(directory, root, expect=None if cls is root else cls).to(device)

    def push_to_hub(self, repo_id, *, private=None, token=None, revision=None,
                    commit_message="Upload tjdkit joint head", create_pr=False, **metadata):
        """Upload this head as a head directory to the hub repository `repo_id` (created when missing)."""
        return push_to_hub(self, repo_id, private=private, token=token, revision=revision,
                           commit_message=commit_message, create_pr=create_pr, **metadata)


# ---- writing ----------------------------------------------------------------------------------


def head_metadata(head, base_model=None, base_model_revision=None, metrics=None, training=None) -> dict:
    """What config.json holds beside the head's config(): given values win over the ones `head` was loaded with."""
    loaded = getattr(head, "hub_info", None) or {}
    pick = lambda given, key: given if given is not None else loaded.get(key)
    return {
        **head.config(),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base_model": None if pick(base_model, "base_model") is None else str(pick(base_model, "base_model")),
        "base_model_revision": pick(base_model_revision, "base_model_revision"),
        "tjdkit_version": _version(),
        "metrics": _known(pick(metrics, "metrics")),
        "training": _known(pick(training, "training")),
    }


def _version() -> str | None:
    """The installed tjdkit's version (read from its metadata: heads must not import the package above them)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tjdkit")
    except PackageNotFoundError:
        return None


def _known(values: Mapping | None) -> dict:
    """Drop unknown entries (None, nan, inf): config.json is strict JSON."""
    import math

    return {str(k): v for k, v in dict(values or {}).items()
            if v is not None and not (isinstance(v, float) and not math.isfinite(v))}


def write_head_files(directory: Path, head, config: dict, where: str | None = None) -> None:
    """head.safetensors, config.json and README.md into `directory` (a temp dir inside atomic_directory)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {key: value.detach().contiguous().cpu() for key, value in head.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt"})
    (directory / CONFIG).write_text(json.dumps(config, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (directory / CARD).write_text(model_card(config, where or str(directory)), encoding="utf-8")


def save_pretrained(head, save_directory: str | Path, **metadata: Any) -> Path:
    """Write a head directory atomically: the old directory or the complete new one, never half of one.

    An existing directory is replaced only when it is a head directory (never a run checkpoint, never
    some other folder: replacing swaps out all of its content)."""
    path = Path(save_directory).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TjdkitError(f"cannot save a head to {path}: it is a file")
        if (path / "checkpoint.json").exists():
            raise TjdkitError(f"{path} is a training checkpoint: save the head to another directory")
        if any(path.iterdir()) and not is_head_dir(path):
            raise TjdkitError(f"{path} exists and is not a head directory: choose a new or empty directory")
    config = head_metadata(head, **metadata)
    with atomic_directory(path) as tmp:
        write_head_files(tmp, head, config, where=str(save_directory))
    return path


def record_metrics(directory: str | Path, metrics: Mapping[str, Any]) -> dict:
    """Merge measured numbers (tau, speedup, ...) into a head directory's config.json and write its
    card again: how `tjdkit bench --card` puts what it measured on the head that is shared."""
    from tjdkit.fileio import atomic_write_text

    directory = Path(directory)
    config = read_config(directory)
    config["metrics"] = _known({**(config.get("metrics") or {}), **metrics})
    atomic_write_text(directory / CONFIG, json.dumps(config, indent=2, allow_nan=False) + "\n")
    atomic_write_text(directory / CARD, model_card(config, str(directory)))
    return config


def push_to_hub(head, repo_id: str, *, private: bool | None = None, token: str | None = None,
                revision: str | None = None, commit_message: str = "Upload tjdkit joint head",
                create_pr: bool = False, **metadata: Any):
    """Create `repo_id` (if needed) and upload the head directory to it; returns the CommitInfo."""
    import tempfile

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    if not isinstance(repo_id, str) or not looks_like_hub_id(repo_id):
        raise TjdkitError(f"push_to_hub needs a hub repository id owner/name, got {repo_id!r}")
    if not hub_reachable():
        raise TjdkitError(f"cannot push to {repo_id}: the Hugging Face hub is unreachable (offline or HF_HUB_OFFLINE=1)")
    config = head_metadata(head, **metadata)
    with tempfile.TemporaryDirectory(prefix="tjdkit-head-") as tmp:
        write_head_files(Path(tmp), head, config, where=repo_id)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model", revision=revision,
                                     commit_message=commit_message, create_pr=create_pr)
        except (OSError, ValueError, HTTPError) as exc:
            raise TjdkitError(f"cannot push to {repo_id}: {_first_line(exc)}") from None


# ---- reading ----------------------------------------------------------------------------------


def resolve(source: str | Path, revision: str | None = None) -> Path:
    """A local head directory, or the hub repository `source` downloaded (safetensors, JSON and markdown only)."""
    text = str(source).strip()
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise TjdkitError(f"refusing {path}: pickled weights can run code when loaded; tjdkit loads head.safetensors only")
        raise TjdkitError(f"{path} is a file: give the head directory (config.json + {WEIGHTS})")
    if path.is_dir():
        if not is_head_dir(path) and is_head_dir(path / "best"):
            return path / "best"  # a training run: its best checkpoint is a head directory
        return path
    if not looks_like_hub_id(text):
        raise TjdkitError(f"head directory not found: {text}")
    return _download(text, revision)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HTTPError

    what = repo_id + (f"@{revision}" if revision else "")
    online = hub_reachable()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES, local_files_only=not online,
                                      library_name="tjdkit"))
    except (OSError, ValueError, HTTPError) as exc:
        if not online:
            raise TjdkitError(f"head not found: {what} is not a local directory, not in the hub cache, and the hub "
                              "is unreachable (offline or HF_HUB_OFFLINE=1)") from None
        raise TjdkitError(f"head not found: {what} is not a local directory, and the Hugging Face hub says: "
                          f"{_first_line(exc)}") from None


def read_config(directory: Path) -> dict:
    """config.json of a head directory, checked; pickled weights beside it are refused, not loaded."""
    directory = Path(directory)
    if not (directory / WEIGHTS).is_file():
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES) if directory.is_dir() else []
        if pickled:
            raise TjdkitError(f"refusing {directory / pickled[0]}: pickled weights can run code when loaded; "
                              f"tjdkit loads {WEIGHTS} only")
    try:
        config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TjdkitError(f"{directory} is not a head directory (no {CONFIG})") from None
    except (OSError, ValueError) as exc:
        raise TjdkitError(f"corrupt head config {directory / CONFIG}: {_first_line(exc)}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise TjdkitError(f"{directory} is not a tjdkit head directory ({CONFIG} has no \"format\": \"{FORMAT}\")")
    if not isinstance(config.get("name"), str):
        raise TjdkitError(f"corrupt head config {directory / CONFIG}: no valid 'name' entry")
    return config


def head_config(config: Mapping) -> dict:
    """The build_head arguments inside a head directory's config.json (build_head refuses unknown ones)."""
    return {key: value for key, value in config.items() if key not in _METADATA_KEYS}


def _head_class(root: type, name: str, directory: Path) -> type:
    """The subclass of `root` (JointHead) called `name`: build_head's registry, found without importing
    tjdkit.heads from here (it imports this module)."""
    todo, seen = [root], []
    while todo:  # breadth first, and only a class that names itself: tjdkit's CPHead before a user's CPHead subclass
        cls = todo.pop(0)
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    found = [cls for cls in seen if vars(cls).get("name") == name and not getattr(cls, "__abstractmethods__", None)]
    if not found:
        known = ", ".join(sorted({cls.name for cls in seen if getattr(cls, "name", "")}))
        raise TjdkitError(f"{directory / CONFIG}: unknown head {name!r} (choose from {known})")
    return found[0]


def load_pretrained(directory: Path, root: type, expect: type | None = None):
    """Build the head named in config.json and load head.safetensors into it (strict: every tensor must fit)."""
    import inspect

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_config(directory)
    arguments = head_config(config)
    cls = _head_class(root, arguments.pop("name"), directory)
    if expect is not None and not issubclass(cls, expect):
        raise TjdkitError(f"{directory} holds the {cls.name} head, not {expect.name or expect.__name__}: "
                          "use JointHead.from_pretrained")
    options = {name for name, p in inspect.signature(root.__init__).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(arguments) - options - {"hidden_size", "vocab_size", "rank", "horizon"})
    if unknown:
        raise TjdkitError(f"corrupt head config {directory / CONFIG}: unknown option(s) {', '.join(unknown)}")
    try:
        head = cls(**arguments)
    except TypeError as exc:
        raise TjdkitError(f"corrupt head config {directory / CONFIG}: {exc}") from None
    try:
        head.load_state_dict(load_file(directory / WEIGHTS))
    except (FileNotFoundError, SafetensorError, RuntimeError, OSError) as exc:
        raise TjdkitError(f"corrupt or missing head weights {directory / WEIGHTS}: {_first_line(exc)[:200]}") from None
    head.hub_info = {key: config.get(key) for key in ("base_model", "base_model_revision", "metrics", "training")}
    return head.eval()


def output_size(model) -> tuple[int, int]:
    """(vocabulary, hidden size) of the model's output layer in any weight format: a quantised
    Linear (fp16-weights) has no weight tensor, only the sizes."""
    layer = model.get_output_embeddings()
    if isinstance(getattr(layer, "out_features", None), int) and isinstance(getattr(layer, "in_features", None), int):
        return layer.out_features, layer.in_features
    return int(layer.weight.shape[0]), int(layer.weight.shape[1])


def check_fits(head, model, model_name: str | None = None) -> None:
    """One clear line when `head` was made for a model of another hidden or vocabulary size than `model`."""
    vocab, hidden = output_size(model)
    if (vocab, hidden) != (head.vocab_size, head.hidden_size):
        base = (getattr(head, "hub_info", None) or {}).get("base_model")
        made_for = f" (base model {base})" if base else ""
        raise TjdkitError(
            f"the {head.name} head was made for hidden size {head.hidden_size} and vocabulary {head.vocab_size}{made_for}, "
            f"but {model_name or 'the model'} has hidden size {hidden} and vocabulary {vocab}: use the head's base model"
        )


def model_revision(model) -> str | None:
    """The hub commit a transformers model was loaded from, when it knows it."""
    config = getattr(model, "config", None)
    value = getattr(config, "_commit_hash", None)
    return value if isinstance(value, str) else None


# ---- the model card ---------------------------------------------------------------------------


def model_card(config: Mapping, where: str) -> str:
    """README.md of a head directory: front matter for the hub, then what it is, how it was made, what it measured."""
    base = config.get("base_model")
    hub_base = HUB_BASE.get(base, base) if isinstance(base, str) else None
    front = ["---", "library_name: tjdkit"]
    if hub_base and looks_like_hub_id(hub_base) and not Path(hub_base).expanduser().exists():
        front.append(f"base_model: {hub_base}")
    front += ["tags:", "- tjdkit", "- joint-head", "- speculative-decoding", f"- {config['name']}", "---", ""]
    name, rank, horizon = config["name"], config.get("rank"), config.get("horizon")
    metrics, training = config.get("metrics") or {}, config.get("training") or {}
    vocab = config.get("vocab_size")
    draft = config.get("draft_vocab")
    structure = f"{name}, horizon {horizon}" + (f", rank {rank}" if name in ("cp", "mps") else "")
    structure += f", draft vocabulary {draft} of {vocab} tokens" if draft else f", vocabulary {vocab}"
    revision = config.get("base_model_revision")
    base_text = f"`{base}`" + (f" (revision `{revision}`)" if revision else "") if base else "not recorded"
    lines = [
        f"# {name.upper()} joint head for {base or 'an unnamed base model'}",
        "",
        (f"A [tjdkit](https://pypi.org/project/tjdkit/) joint head: from the base model's last hidden state it predicts "
        f"the joint distribution of the next {horizon} tokens, so decoding drafts {horizon} tokens per forward and "
        "the base model verifies them (greedy verified decoding is token-for-token the base model's own output)."),
        "",
        "| | |",
        "|---|---|",
        f"| head | {structure} |",
        f"| hidden size | {config.get('hidden_size')} |",
        f"| base model | {base_text} |",
        f"| tjdkit | {config.get('tjdkit_version')} |",
        "",
        "## Training",
        "",
    ]
    if training:
        described = {"dataset": "training data", "description": "recipe", "backbone_mode": "backbone", "step": "steps"}
        for key, label in described.items():
            if key in training:
                lines.append(f"- {label}: {training[key]}")
        mode = training.get("backbone_mode")
        if mode and mode != "frozen":
            lines.append(f"- the backbone trained too ({mode}): its weights are in the training run's checkpoint "
                         "(backbone.safetensors or adapter/), not in this head; `tjdkit chat --head RUN` uses them")
        if training.get("recipe"):
            lines += ["", "<details><summary>resolved recipe</summary>", "", "```yaml", str(training["recipe"]).rstrip(),
                      "```", "", "</details>"]
    else:
        lines.append("Not recorded.")
    tau, speedup = metrics.get("tau"), metrics.get("speedup")
    nll, base_nll = metrics.get("eval_nll"), metrics.get("base_eval_nll")
    lines += [
        "",
        "## Results",
        "",
        "| measure | value |",
        "|---|---|",
        f"| tokens per forward (tau) | {_number(tau) if tau is not None else 'not measured (`tjdkit bench --head-dir` measures it)'} |",
        f"| speedup over plain decoding | {_number(speedup) + 'x' if speedup is not None else 'not measured'} |",
        f"| held-out NLL, nats/token | {_number(nll) if nll is not None else 'not measured'}"
        + (f" (base model: {_number(base_nll)})" if base_nll is not None else "") + " |",
    ]
    if metrics.get("speedup_vs_lookup") is not None:
        lines.append(f"| speedup over transformers' prompt lookup | {_number(metrics['speedup_vs_lookup'])}x |")
    if metrics.get("measured_on"):
        lines.append(f"| measured on | {metrics['measured_on']} |")
    lines += [
        "",
        "## How to use",
        "",
        "```bash",
        "pip install tjdkit",
        f"tjdkit chat --head {where}",
        f"tjdkit bench --head-dir {where}",
        "```",
        "",
        "```python",
        "import tjdkit",
        "from tjdkit.heads import JointHead",
        "",
        f"model, tokenizer = tjdkit.load_model({json.dumps(base or 'BASE_MODEL')})",
        f"head = JointHead.from_pretrained({json.dumps(where)})",
        "tjdkit.attach_head(model, head)  # model.generate drafts with the head; the model verifies",
        "```",
        "",
    ]
    return "\n".join(front + lines)


def _number(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


__all__ = [
    "CARD",
    "CONFIG",
    "FORMAT",
    "WEIGHTS",
    "check_fits",
    "head_metadata",
    "is_head_dir",
    "load_pretrained",
    "model_card",
    "push_to_hub",
    "read_config",
    "resolve",
    "save_pretrained",
    "write_head_files",
]
