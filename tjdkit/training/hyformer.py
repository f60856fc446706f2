"""Hyformer trained from scratch on SMILES, as a tjdkit.training.loop Job: `tjdkit train hyformer-smiles`.

Each batch draws one task by the recipe's weights: `lm` (next token, causal), `mlm`
(masked tokens, bidirectional) or `prediction` (TPSA, bidirectional, pooled). The task
draw, the MLM masks and SMILES augmentation are functions of (seed, step), so a resumed
run continues exactly. A checkpoint is a model directory (config.json, model.safetensors,
the tokenizer) that `load_model`, `tjdkit chat --model` and joint-head training take as is.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from tjdkit.config import HyformerTrainRecipe
from tjdkit.data.smiles import Molecule
from tjdkit.errors import TjdkitError
from tjdkit.evaluation.molecules import held_out_scores, sample_smiles
from tjdkit.fileio import atomic_directory, save_state_tree
from tjdkit.models.hyformer.masking import mask_tokens, regular_ids
from tjdkit.training.loop import EventCallback, read_resume_state, run_loop, tracker_options
from tjdkit.recipes import dump_recipe
from tjdkit.training.runs import CHECKPOINT, TRAINER_STATE

KIND = "hyformer"


def draw_task(seed: int, step: int, weights: dict[str, float]) -> str:
    tasks = [task for task, weight in weights.items() if weight > 0]
    return random.Random(seed * 104_729 + step).choices(tasks, [weights[task] for task in tasks])[0]


def random_smiles(smiles: str, seed: int) -> str:
    """An equivalent SMILES of the same molecule, chosen by `seed` (RDKit's random atom order)."""
    from rdkit import Chem

    molecule = Chem.MolFromSmiles(smiles)
    if molecule is None:
        return smiles
    return Chem.MolToRandomSmilesVect(molecule, 1, randomSeed=seed)[0]


# -- data and model -------------------------------------------------------------------------


@dataclass
class SmilesData:
    tokenizer: object
    train: list[Molecule]
    eval: list[Molecule]
    dropped: int = 0  # training molecules longer than max_seq_len


def load_smiles_data(recipe: HyformerTrainRecipe, tokenizer=None) -> SmilesData:
    """The fixed splits; the tokenizer learns its vocabulary from the training molecules."""
    from tjdkit.data.smiles import smiles_split
    from tjdkit.models.hyformer.tokenizer import build_smiles_tokenizer

    d = recipe.data
    train = smiles_split("train", d.train_size, d.seed)
    held_out = smiles_split("eval", d.eval_size, d.seed)
    if tokenizer is None:
        tokenizer = build_smiles_tokenizer([m.smiles for m in train], max_length=recipe.hyformer.max_seq_len)
    room = recipe.hyformer.max_seq_len - 2  # the task token and <eos>
    lengths = tokenizer([m.smiles for m in train], add_special_tokens=False, verbose=False).input_ids
    kept = [m for m, ids in zip(train, lengths) if len(ids) <= room]
    if not kept:
        raise TjdkitError(f"no training molecule fits hyformer.max_seq_len={recipe.hyformer.max_seq_len}")
    return SmilesData(tokenizer, kept, held_out, len(train) - len(kept))


def model_config(recipe: HyformerTrainRecipe, tokenizer=None, targets: Optional[torch.Tensor] = None):
    """The HyformerConfig the recipe asks for; without a tokenizer, a stand-in vocabulary (for checking)."""
    from tjdkit.models.hyformer import HyformerConfig

    h = recipe.hyformer
    special = {}
    if tokenizer is not None:
        special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, mask_token_id=tokenizer.mask_token_id)
    scale = {}
    if targets is not None:
        scale = dict(prediction_mean=[targets.mean().item()], prediction_std=[targets.std().item() if len(targets) > 1 else 1.0])
    try:
        return HyformerConfig(
            vocab_size=len(tokenizer) if tokenizer is not None else 8,
            d_model=h.d_model,
            n_heads=h.n_heads,
            n_layers=h.n_layers,
            max_seq_len=h.max_seq_len,
            attn_dropout=h.attn_dropout,
            resid_dropout=h.resid_dropout,
            prediction_dropout=h.prediction_dropout,
            pooling=h.pooling,
            num_prediction_tasks=1,
            prediction_task_type="regression",
            **scale,
            **special,
        )
    except ValueError as exc:
        raise TjdkitError(f"hyformer: {exc}") from None


def check_recipe(recipe: HyformerTrainRecipe) -> None:
    """Fail before anything slow: task weights, the architecture, the init directory."""
    if not any(w > 0 for w in (recipe.tasks.lm, recipe.tasks.mlm, recipe.tasks.prediction)):
        raise TjdkitError("tasks: at least one of lm, mlm, prediction needs a weight > 0")
    if recipe.hyformer.init:
        check_init(Path(recipe.hyformer.init).expanduser())
    else:
        model_config(recipe)


def build_model(recipe: HyformerTrainRecipe, data: SmilesData):
    """A fresh Hyformer shaped by the recipe, its TPSA head scaled to the training targets."""
    from tjdkit.models.hyformer import Hyformer

    targets = torch.tensor([m.tpsa for m in data.train])
    return Hyformer(model_config(recipe, data.tokenizer, targets))


def check_init(directory: Path) -> None:
    """hyformer.init names a saved Hyformer: safetensors, no custom code, model type hyformer."""
    from tjdkit.models.loading import check_model_directory

    if not (directory / "config.json").is_file():
        raise TjdkitError(f"hyformer.init: {directory} is not a saved Hyformer (no config.json)")
    model_type = check_model_directory(directory).get("model_type")
    if model_type != "hyformer":
        raise TjdkitError(f"hyformer.init: {directory} is a {model_type or 'model of unknown type'}, not a Hyformer")


def load_init(path: str):
    """A saved Hyformer and its tokenizer to continue training from."""
    from transformers import AutoTokenizer

    from tjdkit.models.hyformer import Hyformer

    directory = Path(path).expanduser()
    check_init(directory)
    try:
        model = Hyformer.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise TjdkitError(f"hyformer.init: cannot load {directory}: {str(exc).splitlines()[0]}") from None
    return model, tokenizer


# -- evaluation -----------------------------------------------------------------------------


def evaluate_tasks(model, tokenizer, molecules: list[Molecule], weights: dict[str, float], mask_fraction: float,
                   training_smiles: Optional[list[str]] = None, samples: int = 128) -> dict[str, float]:
    """What training reports at each evaluation: task losses, TPSA RMSE and R^2 in Å², and (with
    `training_smiles`) the validity of `samples` sampled molecules. eval_loss weighs the task
    losses as training draws them."""
    from tjdkit.data.smiles_metrics import generation_quality, regression_quality

    scores = held_out_scores(model, tokenizer, molecules, mask_fraction)
    quality = regression_quality(scores.predictions, [m.tpsa for m in molecules], model.config.prediction_mean[0])
    used = {task: weight for task, weight in weights.items() if weight > 0}
    result = {
        "eval_loss": sum(weight * scores.losses[task] for task, weight in used.items()) / sum(used.values()),
        "eval_lm_nll": scores.losses["lm"],
        "eval_mlm_nll": scores.losses["mlm"],
        "eval_tpsa_rmse": quality["rmse"],
        "eval_tpsa_r2": quality["r2"],
    }
    if training_smiles is not None and samples > 0:
        sampled = sample_smiles(model, tokenizer, samples, seed=0)
        result["eval_validity"] = generation_quality(sampled, training_smiles)["validity"]
    return result


# -- the job --------------------------------------------------------------------------------


class HyformerJob:
    """Joint lm / mlm / prediction training of one Hyformer, as a loop.Job."""

    score_key = "eval_loss"

    def __init__(self, recipe: HyformerTrainRecipe, model, data: SmilesData):
        self.recipe, self.module, self.data = recipe, model, data
        self.size = len(data.train)
        self.weights = {"lm": recipe.tasks.lm, "mlm": recipe.tasks.mlm, "prediction": recipe.tasks.prediction}
        self.regular = regular_ids(data.tokenizer)
        self.training_smiles = [m.smiles for m in data.train]
        self.info = {"kind": KIND, "model": "hyformer", "dataset": "smiles", "tasks": self.weights,
                     "params": model.get_num_params(), "train_molecules": self.size}

    def train_mode(self, module) -> None:
        module.train()

    def loss(self, module, step: int, batch_index: list[int]) -> tuple[torch.Tensor, int, dict]:
        from tjdkit.models.hyformer.tokenizer import encode_smiles

        seed = self.recipe.train.seed
        task = draw_task(seed, step, self.weights)
        molecules = [self.data.train[i] for i in batch_index]
        smiles = [m.smiles for m in molecules]
        if self.recipe.data.augment:
            smiles = [random_smiles(text, seed * 1_000_003 + step * 4_099 + i) for i, text in enumerate(smiles)]
        device = next(module.parameters()).device
        ids, mask = encode_smiles(self.data.tokenizer, smiles, task, self.module.config.max_seq_len)
        if task == "lm":
            out = module(ids.to(device), task="lm", attention_mask=mask.to(device), labels=ids.masked_fill(mask == 0, -100).to(device))
        elif task == "mlm":
            generator = torch.Generator().manual_seed(seed * 7_919 + step)
            inputs, labels = mask_tokens(ids, mask, self.recipe.tasks.mask_fraction, self.data.tokenizer.mask_token_id,
                                         self.regular, generator)
            out = module(inputs.to(device), task="mlm", attention_mask=mask.to(device), labels=labels.to(device))
        else:
            labels = torch.tensor([[m.tpsa] for m in molecules], device=device)
            out = module(ids.to(device), task="prediction", attention_mask=mask.to(device), labels=labels)
        return out.loss, int(mask.sum()), {"task": task}

    def evaluate(self, module) -> dict[str, float]:
        return evaluate_tasks(module, self.data.tokenizer, self.data.eval, self.weights, self.recipe.tasks.mask_fraction,
                              self.training_smiles, self.recipe.data.eval_samples)

    def save(self, directory: Path, module, info: dict, trainer_state: Optional[dict]) -> None:
        with atomic_directory(directory) as tmp:
            module.save_pretrained(tmp)
            self.data.tokenizer.save_pretrained(tmp)
            (tmp / CHECKPOINT).write_text(json.dumps(info, indent=2))
            if trainer_state is not None:
                save_state_tree(tmp, TRAINER_STATE, trainer_state)

    def restore(self, directory: Path, module) -> None:
        from safetensors.torch import load_file

        try:
            state = load_file(directory / "model.safetensors")
        except (OSError, ValueError) as exc:
            raise TjdkitError(f"corrupt or missing model weights in {directory}: {str(exc).splitlines()[0]}") from None
        result = module.load_state_dict(state, strict=False)
        tied = set(module._tied_weights_keys)
        if result.unexpected_keys or set(result.missing_keys) - tied:
            raise TjdkitError(f"{directory} does not fit this recipe's Hyformer (keys differ)")
        module.tie_weights()


@dataclass
class HyformerTrainResult:
    run_dir: Path
    steps: int
    best: Optional[float]
    last_eval: dict
    params: int
    train_molecules: int
    dropped: int
    resumed_from: int = 0
    history: list = field(default_factory=list)


def train_hyformer(recipe: HyformerTrainRecipe, run_dir: Path, resume: bool = False,
                   on_event: EventCallback = None) -> HyformerTrainResult:
    """Train as `recipe` says; best/ and last/ are loadable model directories."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from tjdkit.models import resolve_device

    check_recipe(recipe)
    run_dir = Path(run_dir)
    state = read_resume_state(run_dir) if resume else None
    torch.manual_seed(recipe.train.seed)
    if recipe.hyformer.init:
        model, tokenizer = load_init(recipe.hyformer.init)
        data = load_smiles_data(recipe, tokenizer)
    else:
        data = load_smiles_data(recipe)
        model = build_model(recipe, data)
    device = resolve_device(recipe.hyformer.device)
    # Each step runs one task, so the other heads get no gradient: DDP must allow that.
    accelerator = Accelerator(
        mixed_precision=recipe.train.mixed_precision,
        cpu=device.type == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **tracker_options(recipe.train, run_dir),
    )
    model = model.to(accelerator.device)
    job = HyformerJob(recipe, model, data)
    done = run_loop(job, recipe.train, run_dir, dump_recipe(recipe), accelerator=accelerator, resume_state=state,
                    on_event=on_event)
    return HyformerTrainResult(run_dir, done.steps, done.best, done.last_eval, job.info["params"], job.size,
                               data.dropped, done.resumed_from, done.history)
