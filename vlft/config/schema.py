"""The run configuration's schema: one dataclass per block of a config file, with help texts and value checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

TowerMethod = Literal["frozen", "lora", "dora", "full"]


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    """A dataclass field whose help text `vlft config explain` prints."""
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return field(metadata={"help": text}, **kw)


@dataclass
class TinyModelConfig:
    """Sizes of the offline `tiny` model built from config (random init)."""

    architecture: Literal["llava", "llava_next", "llava_onevision", "llava_next_video"] = _help(
        "llava family: the transformers architecture of the tiny build (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, "
        "LLaVA-NeXT-Video).", "llava")
    image_size: int = _help("Input image side in pixels.", 64)
    patch_size: int = _help("Vision patch size; image tokens = (image_size / patch_size)^2.", 8)
    vision_hidden_size: int = _help("Width of the CLIP-ViT vision tower.", 64)
    vision_layers: int = _help("Transformer layers in the vision tower.", 2)
    text_hidden_size: int = _help("Width of the Llama text model.", 128)
    text_layers: int = _help("Transformer layers in the text model.", 2)
    num_heads: int = _help("Attention heads in both towers.", 4)
    seed: int = _help("Seed of the random initialisation.", 0)
    dropout: float | None = _help("vl_bart: BART's dropout (null: BART's default, 0.1).", None)


@dataclass
class QuantizationConfig:
    """The base model's linear layers loaded quantized through bitsandbytes (QLoRA-style): frozen k-bit weights,
    adapters on top."""

    bits: Literal[4, 8] = _help("4: NF4 with double quantization, computing in model.dtype (QLoRA); 8: LLM.int8.", 4)


@dataclass
class ModelConfig:
    family: str = _help("Model family, a name registered in vlft.models.FAMILIES: llava (decoder-only VQA), "
                        "vl_bart (BART + CLIP encoder), vit (image classification).", "llava")
    name_or_path: str = _help("Hub name, local checkpoint directory, or `tiny` (a small model built offline).", "tiny")
    dtype: Literal["float32", "bfloat16", "float16"] = _help("Weights dtype at load time.", "float32")
    gradient_checkpointing: bool = _help("Recompute activations in backward to save memory.", False)
    attn_implementation: str | None = _help("transformers attention backend (sdpa, eager, flash_attention_2).", None)
    vision_tower: str | None = _help("vl_bart: open_clip encoder and pretrained tag, e.g. RN101:openai.", None)
    tiny: TinyModelConfig = _help("Sizes used when name_or_path is `tiny`.", default_factory=TinyModelConfig)
    quantization: QuantizationConfig | None = _help(
        "llava: load the language model quantized, e.g. {bits: 4} (needs bitsandbytes); the vision tower, projector "
        "and lm_head stay in model.dtype. null: no quantization.", None)


@dataclass
class AdaptersConfig:
    language: TowerMethod = _help("Method for the language tower.", "dora")
    vision: TowerMethod = _help("Method for the vision tower (its Conv2d patch embedding included).", "frozen")
    projector: TowerMethod = _help("Method for the vision-to-language projector.", "full")
    head: TowerMethod | None = _help("Method for a classification head (vit); null: full where the model has one.",
                                     None)
    r: int = _help("LoRA/DoRA rank.", 8)
    alpha: float = _help("LoRA/DoRA alpha; scale s = alpha / r (alpha / sqrt(r) with rslora).", 16.0)
    dropout: float = _help("Dropout on the low-rank branch input.", 0.0)
    rslora: bool = _help("Use rank-stabilised scaling alpha / sqrt(r).", False)
    target_regex: str | None = _help("Escape hatch: a peft target regex used instead of the tower map.", None)
    dora_impl: Literal["vlft", "peft"] = _help("DoRA forward: vlft's (same function, less time and memory) or "
                                               "stock peft's. Adapter files are peft's either way.", "vlft")

    def __post_init__(self):
        if self.r <= 0:
            raise ConfigError(f"adapters.r must be a positive integer, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"adapters.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class VideoConfig:
    sampling: Literal["uniform", "fps"] = _help(
        "Frames of a video record: `uniform` (num_frames spread over the clip) or `fps` (one every 1/fps "
        "seconds, at most max_frames); a record's start/end (seconds) restrict either to that segment.", "uniform")
    num_frames: int = _help("Frames per video under `uniform` sampling.", 8)
    fps: float = _help("Frames per second under `fps` sampling.", 1.0)
    max_frames: int = _help("Most frames under `fps` sampling (evenly thinned past it).", 16)
    min_frames: int | None = _help("A clip or segment with fewer frames is `too_short_video` (null: num_frames "
                                   "for uniform, 1 for fps).", None)

    def __post_init__(self):
        if self.num_frames < 1 or self.max_frames < 1 or self.fps <= 0:
            raise ConfigError("data.video: num_frames and max_frames must be >= 1 and fps > 0")

    def needed(self) -> int:
        """Fewest frames a clip or segment must give; fewer is `too_short_video`."""
        if self.min_frames is not None:
            return self.min_frames
        return self.num_frames if self.sampling == "uniform" else 1

    def most(self) -> int:
        """Most frames one video can give (what the token budget must hold)."""
        return self.num_frames if self.sampling == "uniform" else self.max_frames


@dataclass
class DataSource:
    """One data file (or dataset) of data.train / data.eval, with its share of a training mix."""

    path: str = _help("JSON list, JSONL or Parquet file, a `datasets` save_to_disk directory, or a hub dataset id.")
    weight: float | None = _help(
        "Share of the training examples drawn from this source (weights are normalised over data.train; an epoch "
        "holds as many examples as the sources together; a source is subsampled or repeated to its share). "
        "null: every record once.", None)
    split: str = _help("Split of a save_to_disk DatasetDict or a hub dataset.", "train")

    def __post_init__(self):
        if self.weight is not None and self.weight < 0:
            raise ConfigError(f"data source {self.path}: weight must be >= 0, got {self.weight}")


@dataclass
class DataConfig:
    train: str | list[str | DataSource] = _help(
        "Training records (LLaVA conversation format): a JSON list, JSONL or Parquet file, a `datasets` "
        "save_to_disk directory or a hub dataset id; a list mixes several in one run, each a path or "
        "{path, weight, split}.")
    eval: str | list[str | DataSource] | None = _help(
        "Eval records, same forms (references: `answers`, else the last gpt turn); each record is scored by its "
        "`task` (default vqa).", None)
    image_folder: str = _help("Directory that record `image` paths are relative to.", ".")
    features: str | None = _help("vl_bart: a directory of visual features pre-extracted by "
                                 "data_prep/extract_clip_features.py, read instead of images (vision frozen).", None)
    max_length: int = _help("Maximum tokens per example, image tokens included.", 2048)
    cache_dir: str | None = _help(
        "Where records are stored once validated and tokenized (Arrow files, memory-mapped by every rank; reused "
        "while the data files, tokenizer, template and lengths are unchanged). null: $VLFT_CACHE_DIR, else "
        "~/.cache/vlft/data. On several nodes it may be node-local (each node prepares its own) or shared.", None)
    shuffle: bool = _help("Shuffle the training examples every epoch (false: in file order).", True)
    group_by_modality_length: bool = _help(
        "LLaVA's sampler: each optimizer step's examples (over all ranks) are all multimodal or all text-only, "
        "and of similar lengths, which wastes less padding.", False)
    group_by_record: bool = _help(
        "vl_bart training: all questions of a record form one example, so its image or video goes through the "
        "vision tower once for all of them (per_device_batch_size then counts records); false: one example "
        "per question.", False)
    num_workers: int = _help("DataLoader worker processes.", 0)
    system_prompt: str = _help("Text placed before the first user turn.", "")
    on_error: Literal["raise", "skip"] = _help(
        "A bad record (malformed, missing or corrupt image or video, too long, too short a video): `raise` "
        "stops naming it; `skip` leaves it out and counts it by reason in the log and metrics.json.", "raise")
    video: VideoConfig = _help("How frames are taken from video records (paths relative to image_folder).",
                               default_factory=VideoConfig)

    def __post_init__(self):
        if isinstance(self.eval, list) and any(isinstance(s, DataSource) and s.weight is not None for s in self.eval):
            raise ConfigError("data.eval: weights mix training data; every eval record is scored once")
        if isinstance(self.train, list):
            weighted = [isinstance(s, DataSource) and s.weight is not None for s in self.train]
            if any(weighted) and not all(weighted):
                raise ConfigError("data.train: give every source a weight, or none")
            if all(weighted) and self.train and sum(s.weight for s in self.train) <= 0:
                raise ConfigError("data.train: the weights add up to 0")


@dataclass
class TrainingConfig:
    output_dir: str = _help("Run directory: checkpoints, adapter, metrics.json.")
    seed: int = _help("Seed for init, data order and dropout.", 42)
    epochs: float = _help("Passes over the training data.", 1.0)
    max_steps: int = _help("Stop after this many optimizer steps (-1: use epochs).", -1)
    per_device_batch_size: int = _help("Examples per process per micro-step.", 8)
    gradient_accumulation_steps: int = _help("Micro-steps per optimizer step.", 1)
    lr: float = _help("Peak learning rate of adapters and fully trained towers.", 2e-4)
    projector_lr: float | None = _help("Learning rate of the projector (default: lr).", None)
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    scheduler: str = _help("transformers scheduler name (cosine, linear, constant, ...).", "cosine")
    warmup_ratio: float = _help("Fraction of steps spent warming up.", 0.03)
    max_grad_norm: float = _help("Gradient clipping norm.", 1.0)
    bf16: bool = _help("Mixed precision in bfloat16.", False)
    fp16: bool = _help("Mixed precision in float16 with loss scaling (GPUs without bf16); a CPU runs fp32.", False)
    logging_steps: int = _help("Log the loss every N steps.", 10)
    save_steps: int = _help("Write a checkpoint every N steps.", 500)
    save_total_limit: int | None = _help("Keep at most this many checkpoints.", 2)
    eval_steps: int = _help("Evaluate every N steps (0: only at the end).", 0)
    resume: str | None = _help("`auto` (newest checkpoint in output_dir), a checkpoint path, or null.", None)
    deepspeed: str | None = _help("DeepSpeed JSON config (configs/deepspeed/zero{2,3,3_offload}.json).", None)
    ddp_timeout: int = _help(
        "Seconds a rank waits in a collective (a barrier, a gather) before the run fails: raise it when one rank "
        "may work alone for long while the others wait (the first preparation of a large dataset, a big "
        "checkpoint save).", 1800)
    save_on_each_node: bool | None = _help(
        "Several nodes: whether every node writes checkpoints and outputs into its own output_dir (node-local "
        "disks) or only the first node does (one shared directory). null: found out at start by looking for a "
        "file the first node writes there.", None)
    report_to: list[str] = _help("Trainer loggers (tensorboard, wandb, none); TensorBoard logs go to "
                                 "output_dir/runs.", default_factory=lambda: ["tensorboard"])

    def __post_init__(self):
        if self.ddp_timeout <= 0:
            raise ConfigError(f"training.ddp_timeout must be a positive number of seconds, got {self.ddp_timeout}")
        if self.bf16 and self.fp16:
            raise ConfigError("training.bf16 and training.fp16 are both true: choose one")


@dataclass
class EvalConfig:
    max_samples: int | None = _help("Evaluate on the first N eval records (null: all).", None)
    batch_size: int = _help("Prompts per generation batch per process.", 32)
    max_new_tokens: int = _help("Greedy generation length.", 16)
    at_end: bool = _help("Evaluate once training ends.", True)


@dataclass
class SweepConfig:
    methods: list[Literal["full", "lora", "dora"]] = _help(
        "`vlft sweep`: methods to compare; `full` trains the swept towers whole.",
        default_factory=lambda: ["full", "lora", "dora"])
    ranks: list[int] = _help("`vlft sweep`: LoRA/DoRA ranks (alpha keeps the config's alpha / r).",
                             default_factory=lambda: [4, 8, 16, 32])
    seeds: int = _help("`vlft sweep`: seeds per (method, rank): training.seed, training.seed + 1, ...", 3)
    towers: list[Literal["language", "vision", "projector"]] | None = _help(
        "`vlft sweep`: towers that take the method (null: the config's lora/dora towers).", None)
    output_dir: str | None = _help("`vlft sweep`: where the run directories and tables go (null: "
                                   "training.output_dir + '_sweep').", None)
    method_overrides: dict[str, list[str]] = _help(
        "`vlft sweep`: extra key=value overrides per method, e.g. {full: [training.lr=2e-4]}.", default_factory=dict)


@dataclass
class RunConfig:
    data: DataConfig = _help("Training and evaluation data.")
    training: TrainingConfig = _help("Optimisation, checkpoints, DeepSpeed.")
    model: ModelConfig = _help("Which model and how to load it.", default_factory=ModelConfig)
    adapters: AdaptersConfig = _help("Per-tower fine-tuning method and DoRA/LoRA hyper-parameters.",
                                     default_factory=AdaptersConfig)
    eval: EvalConfig = _help("Generation-based evaluation.", default_factory=EvalConfig)
    sweep: SweepConfig = _help("The grid `vlft sweep` runs (ignored by `vlft train`).", default_factory=SweepConfig)

    def __post_init__(self):
        if self.model.quantization is not None:
            if self.model.family != "llava":
                raise ConfigError(f"model.quantization: supported for the llava family, not {self.model.family}")
            if self.adapters.language == "full":
                raise ConfigError("model.quantization: a quantized language model cannot be trained in full; "
                                  "set adapters.language to lora, dora or frozen")
