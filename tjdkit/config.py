"""Typed recipe sections. Every recipe YAML validates into one of the `*Recipe` classes here.

Field metadata carries bounds (`min`, `max`, `gt`) that `tjdkit.recipes` checks, so a bad
value is reported with its key and file rather than failing deep inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Optional

SEED = {"min": 0, "max": 2**63 - 1}  # what torch.manual_seed and every generator here accept

DType = Literal["auto", "float32", "bfloat16", "float16", "fp16-weights"]  # fp16-weights: CPU decoding only (tjdkit.models.quantize)


@dataclass
class TnotConfig:
    """Every TNOT setting in one typed place (also a recipe section, `tnot:`); tjdkit.tnot runs them.

    Defaults follow the published methods: SLOT's AdamW (lr 0.1, weight decay 1e-8, eps 1e-5)
    on a delta added to the final hidden state, SRGen's entropy trigger (static 3.0, or
    adaptive max(mean + K * max(std, 0.5), 1.8) over the last N = 20 entropies, K = 2) and
    its reflection loss (1 - w) * CE(context) + w * entropy with w = 0.1, at most 5 times.
    """

    # AdamW steps on the prompt's delta, and on each reflection's fresh delta (0: no optimisation).
    steps: int = field(default=3, metadata={"min": 0})
    lr: float = field(default=0.1, metadata={"gt": 0.0})
    weight_decay: float = field(default=1e-8, metadata={"min": 0.0})
    eps: float = field(default=1e-5, metadata={"gt": 0.0})
    # Prompt stage (SLOT): fit a delta to the prompt's own next tokens and decode with it.
    optimize_prompt: bool = True
    # Entropy trigger on every generated token.
    entropy_control: bool = True
    entropy_threshold: float = field(default=3.0, metadata={"min": 0.0})
    # Adaptive: once `window` tokens are seen, max(mean + k * max(std, min_std), floor) over the
    # last `window` entropies (population std); before that, entropy_threshold.
    adaptive: bool = False
    window: int = field(default=20, metadata={"min": 1})
    k: float = field(default=2.0, metadata={"min": 0.0})
    min_std: float = field(default=0.5, metadata={"min": 0.0})
    floor: float = field(default=1.8, metadata={"min": 0.0})
    # Reflection (SRGen): a fresh delta for the triggering position, loss
    # (1 - entropy_weight) * CE(context) + entropy_weight * entropy(next token).
    # false: a triggering token ends the response at once (the published decorator's behaviour).
    reflect: bool = True
    entropy_weight: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    max_retries: int = field(default=5, metadata={"min": 0})
    # What a trigger does once the retries are spent: end the response (eos) or keep the token.
    on_exhausted: Literal["eos", "continue"] = "eos"
    # Cross-entropy covers at most this many of the most recent context tokens (memory: one
    # vocabulary-sized row of logits per token, 1 MB each on Gemma 3).
    context_window: int = field(default=1024, metadata={"min": 2})
    # Append one JSON line per generated token here (the seeds' record_entropy; the CLI has --record).
    record_path: Optional[str] = None
    # "tjdkit": the rules above. "srgen": exactly what the published SRGen decorator does, for the
    # seeds' users (tjdkit.tnot.srgen); enable_tnot configured from the environment uses it.
    mode: Literal["tjdkit", "srgen"] = "tjdkit"

    def check(self) -> "TnotConfig":
        """Types and bounds as a recipe would check them, for configs built in Python or from the environment."""
        from tjdkit.recipes import from_mapping, to_mapping

        return from_mapping(TnotConfig, to_mapping(self), source="tnot config")


@dataclass
class ModelSection:
    name: str = "gemma3"
    dtype: DType = "auto"
    device: str = "auto"


@dataclass
class GenerationSection:
    max_new_tokens: int = field(default=256, metadata={"min": 1})
    # 0 means greedy decoding.
    temperature: float = field(default=0.7, metadata={"min": 0.0})
    top_k: int = field(default=64, metadata={"min": 0})
    top_p: float = field(default=0.95, metadata={"gt": 0.0, "max": 1.0})
    repetition_penalty: float = field(default=1.0, metadata={"gt": 0.0})
    seed: Optional[int] = field(default=None, metadata=SEED)


ChatFormat = Literal["auto", "template", "gemma", "raw"]


@dataclass
class ChatSection:
    system: Optional[str] = None
    # auto: the tokenizer's chat template; else raw for models registered as pretrained
    # (gemma3-270m); else Gemma's turn format. raw: plain continuation, no turns, no history.
    format: ChatFormat = "auto"
    # A run directory from `tjdkit train`: its joint head decodes the replies (with the run's model).
    head: Optional[str] = None
    # verify: lossless, the model's own output, faster; draft: the head's joint alone (lossy).
    head_mode: Literal["verify", "draft"] = "verify"
    # Every reply with TNOT (the `tnot` section's settings): prompt delta, entropy trigger, reflection.
    tnot: bool = False


@dataclass
class ChatRecipe:
    command: ClassVar[str] = "chat"
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    chat: ChatSection = field(default_factory=ChatSection)
    tnot: TnotConfig = field(default_factory=TnotConfig)


@dataclass
class PromptsSection:
    # Prompts from a dataset's split (the command line's PROMPT arguments win over it).
    dataset: Optional[Literal["stemp", "gsm8k", "capitals"]] = None
    split: str = "test"
    limit: Optional[int] = field(default=20, metadata={"min": 1})
    seed: int = field(default=0, metadata=SEED)
    # How typed prompts are wrapped: auto, template, gemma or raw (as `tjdkit chat --format`).
    format: ChatFormat = "auto"


@dataclass
class TnotRecipe:
    command: ClassVar[str] = "tnot"
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    generation: GenerationSection = field(default_factory=lambda: GenerationSection(max_new_tokens=128, temperature=0.0))
    tnot: TnotConfig = field(default_factory=TnotConfig)
    prompts: PromptsSection = field(default_factory=PromptsSection)
    # Settings to compare beside the plain model, each the `tnot` section with these keys changed
    # (e.g. [{steps: 1}, {adaptive: true}]); empty: the `tnot` section alone.
    sweep: list[dict[str, Any]] = field(default_factory=list)


HeadName = Literal["stp", "multihead", "cp", "mps"]
Positivity = Literal["none", "exp", "safe_exp", "sigmoid", "relu", "sq", "abs"]


@dataclass
class HeadSection:
    name: HeadName = "cp"
    rank: int = field(default=4, metadata={"min": 1})
    horizon: int = field(default=4, metadata={"min": 1, "max": 16})
    positivity: Positivity = "none"
    # Size of each component's embedding before the shared decoder; null = hidden size.
    embedding_dim: Optional[int] = field(default=None, metadata={"min": 1})
    # Decode over the K most frequent tokens of the training data only (cheap on 262k vocabularies).
    draft_vocab: Optional[int] = field(default=None, metadata={"min": 2})
    # Start the shared decoder from the model's own lm_head, so a fresh head is close to the base model.
    init_from_lm_head: bool = True
    freeze_decoder: bool = False


BackboneMode = Literal["frozen", "last_layer", "lora", "full"]


@dataclass
class BackboneSection:
    # frozen: features computed once and cached; last_layer: also train the last block;
    # lora: low-rank adapters (peft); full: every weight.
    mode: BackboneMode = "frozen"
    lora_rank: int = field(default=8, metadata={"min": 1})
    # Weight of the base next-token loss while the backbone trains (keeps plain decoding working).
    lm_loss_weight: float = field(default=1.0, metadata={"min": 0.0})


@dataclass
class DataSection:
    dataset: Literal["stemp", "sharegpt", "gsm8k", "smiles"] = "stemp"
    train_size: Optional[int] = field(default=None, metadata={"min": 1})
    eval_size: Optional[int] = field(default=None, metadata={"min": 1})
    max_length: int = field(default=256, metadata={"min": 8})
    # Train on the base model's own greedy continuations (maximises acceptance when verifying).
    self_distill: bool = False
    # Tokens each self-distilled continuation may run to (null: the original answer's length);
    # set it to the length you decode (e.g. bench's --max-new-tokens). Capped by max_length.
    distill_tokens: Optional[int] = field(default=None, metadata={"min": 1})
    # Prompts generated together when distilling (null: train.batch_size); on a CPU a batch of
    # 32 yields ~3x the tokens per second of a batch of 8.
    distill_batch_size: Optional[int] = field(default=None, metadata={"min": 1})
    # fp16-weights: generate the distilled text with float16 weights (CPU, ~2x faster; the model's
    # own greedy text up to float16 rounding of its weights). Features and training stay float32.
    distill_weights: Literal["same", "fp16-weights"] = "same"
    seed: int = field(default=0, metadata=SEED)


@dataclass
class TrainSection:
    epochs: int = field(default=1, metadata={"min": 1})
    max_steps: Optional[int] = field(default=None, metadata={"min": 1})
    batch_size: int = field(default=8, metadata={"min": 1})
    lr: float = field(default=1e-3, metadata={"gt": 0.0})
    weight_decay: float = field(default=0.0, metadata={"min": 0.0})
    warmup_steps: int = field(default=0, metadata={"min": 0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})
    # One random offset and every H-th position (TJDNet's memory-efficient loss).
    memory_efficient_loss: bool = False
    eval_every: int = field(default=200, metadata={"min": 1})
    save_every: int = field(default=200, metadata={"min": 1})
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = field(default=0, metadata=SEED)
    # Micro-batches of batch_size whose gradients add up to one optimizer step: the effective batch is
    # batch_size x gradient_accumulation_steps x processes.
    gradient_accumulation_steps: int = field(default=1, metadata={"min": 1})
    # Where each step's metrics also go, through accelerate's trackers (metrics.jsonl is always written):
    # tensorboard (pip install tjdkit[tensorboard]) or wandb (tjdkit[wandb]; offline unless you configured it).
    report_to: Literal["none", "tensorboard", "wandb"] = "none"


@dataclass
class TrainRecipe:
    command: ClassVar[str] = "train"
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    head: HeadSection = field(default_factory=HeadSection)
    backbone: BackboneSection = field(default_factory=BackboneSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    out: Optional[str] = None


@dataclass
class FactorizeSection:
    # tucker: shared-factor Tucker of Q/K/V/O per layer (TensorLLM); tpa: Q/K/V as contextual
    # tensor products with a KV cache of factors (T6); latent: a smaller KV cache (partial-RoPE keys,
    # low-rank latent values; factorize.latent).
    method: Literal["tucker", "tpa", "latent"] = "tucker"
    # tucker: auto = the smallest stored attention within max_ppl_increase (per-layer sensitivity
    # and a knapsack, see factorize.sensitivity); energy = ranks by --energy; explicit ranks
    # R_dmodel,R_headdim,R_role; or a parameter-compression target like 2x.
    # tpa: auto (by --energy) or R_q,R_k,R_v. latent: auto (half the cache) or K,R.
    rank: str = "auto"
    # rank auto (tucker): the allowed perplexity increase, in percent, on calibration tokens.
    max_ppl_increase: float = field(default=1.0, metadata={"gt": 0.0})
    # rank auto (tucker): calibration tokens each sensitivity measurement runs on.
    budget_tokens: int = field(default=512, metadata={"min": 16})
    # 0.999: the energy at which factorising every layer leaves the model as good as it was.
    # Measured on Gemma 3 270M (1024 held-out ShareGPT tokens, base perplexity 8.19, activation-
    # aware, all 18 layers): 0.999 -> +2.0%, 0.99 -> +35%; data-free at 0.99 -> x323. Its attention
    # spectra are flat, so energies that keep the model usable keep ranks near full and the stored
    # factors come out larger than the dense weights (0.81x at 0.999, 1.00x at 0.99): compressing
    # this model is a choice of budget (`--rank 2x`) and a loss of quality the report shows.
    energy: float = field(default=0.999, metadata={"gt": 0.0, "max": 1.0})
    layers: str = "all"
    # Per-layer rank specs that override `rank`, e.g. {"5": "320,160,4"}.
    layer_ranks: dict[str, str] = field(default_factory=dict)
    materialize: bool = False
    # tucker: weigh the decomposition by the calibration text's activations (false: data-free TensorLLM).
    activation_aware: bool = True
    # Text for activations (tpa refinement, activation-aware tucker): a dataset, a .txt file or the text.
    calibration: str = "sharegpt"
    calibration_tokens: int = field(default=2048, metadata={"min": 16})
    steps: int = field(default=100, metadata={"min": 0})
    lr: float = field(default=1e-3, metadata={"gt": 0.0})
    # Tokens of the fixed held-out text (ShareGPT test split) for perplexity; 0 skips it.
    eval_tokens: int = field(default=1024, metadata={"min": 0})


@dataclass
class HealSection:
    """Distillation after factorising: only the new factors train to match the original model."""

    # Calibration tokens to train on (0: no healing); one pass, in windows of `window` tokens.
    tokens: int = field(default=0, metadata={"min": 0})
    window: int = field(default=256, metadata={"min": 8})
    batch_size: int = field(default=1, metadata={"min": 1})
    gradient_accumulation_steps: int = field(default=1, metadata={"min": 1})
    lr: float = field(default=1e-4, metadata={"gt": 0.0})
    # Also train the attention's q/k norms (Gemma 3), not only the factors.
    norms: bool = False
    # Calibration tokens held out (after the training ones) to choose the best step and to check
    # that healing helped; never the report's held-out perplexity text.
    eval_tokens: int = field(default=512, metadata={"min": 8})
    eval_every: int = field(default=50, metadata={"min": 1})
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    # Checkpoints, metrics.jsonl (default: OUT.heal beside --out, else runs/heal).
    run_dir: Optional[str] = None


@dataclass
class FactorizeRecipe:
    command: ClassVar[str] = "factorize"
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    factorize: FactorizeSection = field(default_factory=FactorizeSection)
    heal: HealSection = field(default_factory=HealSection)
    out: Optional[str] = None


@dataclass
class HyformerSection:
    """The architecture of a Hyformer trained from scratch (HyformerConfig's fields)."""

    d_model: int = field(default=256, metadata={"min": 8})
    n_heads: int = field(default=8, metadata={"min": 1})
    n_layers: int = field(default=4, metadata={"min": 1})
    # Molecules longer than this (task token and <eos> included) are left out of training.
    max_seq_len: int = field(default=128, metadata={"min": 8})
    attn_dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 0.9})
    resid_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 0.9})
    prediction_dropout: float = field(default=0.1, metadata={"min": 0.0, "max": 0.9})
    # first: the task token's state (it sees the whole molecule); mean: the average over tokens.
    pooling: Literal["first", "mean"] = "first"
    # Start from a saved Hyformer (a directory) instead of random weights; its architecture wins.
    init: Optional[str] = None
    device: str = "auto"


@dataclass
class TaskWeights:
    """How often each task is drawn for a batch (relative weights; 0 leaves a task out)."""

    lm: float = field(default=1.0, metadata={"min": 0.0})
    mlm: float = field(default=0.5, metadata={"min": 0.0})
    prediction: float = field(default=1.0, metadata={"min": 0.0})
    # mlm: share of tokens chosen; of those 80% become <mask>, 10% a random token, 10% stay.
    mask_fraction: float = field(default=0.15, metadata={"gt": 0.0, "max": 1.0})


@dataclass
class SmilesDataSection:
    dataset: Literal["smiles"] = "smiles"
    # Molecules of the fixed train split (3914 in all); null: all of them.
    train_size: Optional[int] = field(default=None, metadata={"min": 1})
    # Held-out molecules (eval split) scored at every evaluation; null: all 489.
    eval_size: Optional[int] = field(default=None, metadata={"min": 1})
    # Molecules sampled at each evaluation to read validity during training (0: none).
    eval_samples: int = field(default=128, metadata={"min": 0})
    # Train on a random equivalent SMILES of each molecule every time it is drawn (RDKit).
    augment: bool = False
    seed: int = field(default=0, metadata=SEED)


@dataclass
class HyformerTrainRecipe:
    """A `train` recipe with a `hyformer:` section trains a Hyformer instead of a joint head."""

    command: ClassVar[str] = "train"
    description: str = ""
    hyformer: HyformerSection = field(default_factory=HyformerSection)
    tasks: TaskWeights = field(default_factory=TaskWeights)
    data: SmilesDataSection = field(default_factory=SmilesDataSection)
    train: TrainSection = field(default_factory=TrainSection)
    out: Optional[str] = None


def train_schema(recipe: dict) -> type:
    """Which `train` recipe this mapping is: a `hyformer:` section makes it a Hyformer's."""
    return HyformerTrainRecipe if "hyformer" in recipe else TrainRecipe
