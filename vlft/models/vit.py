"""ViT family: timm Vision Transformers fine-tuned for image classification.

DoRA/LoRA on the `vision` tower reaches every Linear (attention qkv and proj, MLP fc1 and fc2) and
the Conv2d patch embedding; the classification `head` is trained in full by default.

A vlft ViT checkpoint is a directory: `config.json` {"architecture", "model_args", "labels",
"data_config"} and `model.safetensors` (encoder and head); `vlft merge` writes timm's own layout instead,
which `load` also reads. `load(model_cfg, path)` reads one, or, for
a timm name (e.g. `timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`), creates the pretrained encoder
through timm with a fresh head for the training data's labels. `build_tiny` writes a random-init
checkpoint that goes back through the same `load`.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.data import create_transform, resolve_data_config
from torch import nn
from transformers import PretrainedConfig

from vlft.config import ModelConfig, RunConfig, TinyModelConfig
from vlft.models.base import ModelBundle, ModelLoadError
from vlft.ranks import log_main

TOWERS = {"vision": ("encoder",), "head": ("head",)}
TINY_ARCHITECTURE = "vit_tiny_patch16_224"
MODEL_FILES = ("config.json",)
DATA_OPTIONS: frozenset[str] = frozenset()


class ImageClassifier(nn.Module):
    """A timm encoder (pooled features, no head of its own) and a linear head; returns loss and logits."""

    # The loss is a mean over this batch: the Trainer must not rescale it as a per-item sum (a model taking
    # **kwargs is otherwise taken to use num_items_in_batch, and its loss multiplied by the number of ranks).
    accepts_loss_kwargs = False

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_classes)
        # What the Trainer's DeepSpeed integration reads to size its "auto" buckets.
        self.config = PretrainedConfig(hidden_size=encoder.num_features)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_) -> dict:
        logits = self.head(self.encoder(pixel_values))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class TimmImageProcessor:
    """timm's eval transform behind the call signature of a transformers image processor."""

    def __init__(self, data_config: dict):
        self.data_config = data_config
        self.transform = create_transform(**data_config, is_training=False)

    def __call__(self, image, return_tensors: str = "pt") -> dict:
        return {"pixel_values": self.transform(image).unsqueeze(0)}

    def save_pretrained(self, directory: str | Path) -> None:
        path = Path(directory) / "preprocessor_config.json"
        path.write_text(json.dumps({"timm_data_config": self.data_config}, indent=1))


def _data_config(encoder: nn.Module, image_size: int | None) -> dict:
    overrides = {"input_size": (3, image_size, image_size), "crop_pct": 1.0} if image_size else {}
    config = resolve_data_config(overrides, model=encoder)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _bundle(model: ImageClassifier, labels: list[str], data_config: dict, path: str) -> ModelBundle:
    return ModelBundle(model=model, tokenizer=None, image_processor=TimmImageProcessor(data_config),
                       towers=TOWERS, base_path=path, extra={"labels": labels})


def _from_timm_export(directory: Path) -> tuple[ImageClassifier, list[str], dict]:
    """A timm checkpoint directory (what `vlft merge` writes): the timm head becomes the classifier's head."""
    timm_model = timm.create_model(f"local-dir:{directory}", pretrained=True)
    labels = timm_model.pretrained_cfg.get("label_names") or [str(i) for i in range(timm_model.num_classes)]
    head_state = timm_model.get_classifier().state_dict()
    timm_model.reset_classifier(0)
    model = ImageClassifier(timm_model, len(labels))
    model.head.load_state_dict(head_state)
    return model, list(labels), _data_config(timm_model, None)


_NEW_HEAD_ANNOUNCED: set[str] = set()


def with_new_head(model: ImageClassifier, old_labels: list[str], labels: list[str], path: str) -> ImageClassifier:
    """A pretrained classifier fine-tuned on other labels (a stage-1 base, then a new task): its encoder is
    kept and the head starts afresh over the new labels, as with a timm encoder from the hub."""
    if path not in _NEW_HEAD_ANNOUNCED:  # once per process: `vlft analyze` loads the base for every checkpoint
        _NEW_HEAD_ANNOUNCED.add(path)
        log_main(f"vit: {path} classifies {len(old_labels)} labels ({', '.join(old_labels[:4])}, ...), the training "
                 f"data {len(labels)} ({', '.join(labels[:4])}, ...): its encoder is kept, the head starts afresh")
    return ImageClassifier(model.encoder, len(labels))


def load(model_cfg: ModelConfig, path: str, with_model: bool = True, labels: list[str] | None = None) -> ModelBundle:
    """A vlft ViT directory, a timm checkpoint directory, or a timm model name (pretrained encoder, new head
    over ``labels``)."""
    directory = Path(path)
    if (directory / "config.json").is_file():
        config = json.loads((directory / "config.json").read_text())
        if "pretrained_cfg" in config:
            model, saved_labels, data_config = _from_timm_export(directory)
        else:
            encoder = timm.create_model(config["architecture"], pretrained=False, num_classes=0,
                                        **config["model_args"])
            saved_labels, data_config = config["labels"], config["data_config"]
            model = ImageClassifier(encoder, len(saved_labels))
            model.load_state_dict(load_file(str(directory / "model.safetensors")))
        if labels and list(labels) != list(saved_labels):
            model = with_new_head(model, saved_labels, labels, path)
        else:
            labels = saved_labels
        return _bundle(model.to(getattr(torch, model_cfg.dtype)), list(labels), data_config, path)
    if not labels:
        raise ModelLoadError(f"ViT '{path}': a new classification head needs the labels of the training data")
    try:
        encoder = timm.create_model(path, pretrained=True, num_classes=0)
    except Exception as err:  # timm raises RuntimeError/OSError/HF hub errors for unknown or unreachable names
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        raise ModelLoadError(f"cannot load ViT '{path}': not a vlft ViT directory and not a timm model that can be "
                             f"downloaded ({reason})") from None
    model = ImageClassifier(encoder, len(labels)).to(getattr(torch, model_cfg.dtype))
    return _bundle(model, list(labels), _data_config(encoder, None), path)


def export_merged(model: ImageClassifier, bundle: ModelBundle, out_dir: str | Path) -> None:
    """timm's own checkpoint layout (config.json + model.safetensors, the head inside the timm model, label
    names and preprocessing in its pretrained_cfg): `timm.create_model("local-dir:<out_dir>", pretrained=True)`."""
    from timm.models import save_for_hf

    encoder = model.encoder
    encoder.reset_classifier(model.head.out_features)
    encoder.get_classifier().load_state_dict(model.head.state_dict())
    save_for_hf(encoder, str(out_dir), model_config={"label_names": bundle.extra["labels"]},
                safe_serialization=True, data_config=bundle.image_processor.data_config)


def build_tiny(tiny: TinyModelConfig, labels: list[str], out_dir: str | Path) -> Path:
    """A small random-init ViT classifier saved as a vlft ViT directory."""
    torch.manual_seed(tiny.seed)
    model_args = {"img_size": tiny.image_size, "patch_size": tiny.patch_size, "embed_dim": tiny.vision_hidden_size,
                  "depth": tiny.vision_layers, "num_heads": tiny.num_heads}
    encoder = timm.create_model(TINY_ARCHITECTURE, pretrained=False, num_classes=0, **model_args)
    model = ImageClassifier(encoder, len(labels))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    config = {"architecture": TINY_ARCHITECTURE, "model_args": model_args, "labels": list(labels),
              "data_config": _data_config(encoder, tiny.image_size)}
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    return out_dir


def training_labels(cfg: RunConfig) -> list[str]:
    """Sorted distinct labels of the training records (malformed records are left to the dataset's checks)."""
    from vlft.data.classification import label_set

    return label_set(cfg.data.train)


# The hooks every family gives (vlft.models.contract).

def build_tiny_for_run(cfg: RunConfig, out_dir: str | Path) -> Path:
    return build_tiny(cfg.model.tiny, training_labels(cfg), out_dir)


def load_for_run(cfg: RunConfig, path: str, with_model: bool = True) -> ModelBundle:
    """The checkpoint with a head over the training data's labels (a new one where the checkpoint's differ).
    A checkpoint that has labels of its own keeps them when the training data is not at hand (a run evaluated
    or served on another machine)."""
    from vlft.data.records import DataError

    try:
        labels = training_labels(cfg)
    except DataError as err:
        if not (Path(path) / "config.json").is_file():
            raise
        log_main(f"vit: the training data cannot be read ({err}); {path} keeps its own labels")
        labels = None
    return load(cfg.model, path, with_model, labels=labels)


def train_dataset(cfg: RunConfig, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.cache import dataset_options
    from vlft.data.classification import LabelledImageDataset

    return LabelledImageDataset(cfg.data.train, bundle, cfg.data.image_folder, on_error=on_error or cfg.data.on_error,
                                **dataset_options(cfg))


def eval_dataset(cfg: RunConfig, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.cache import dataset_options
    from vlft.data.classification import LabelledImageDataset

    return LabelledImageDataset(cfg.data.eval, bundle, cfg.data.image_folder, cfg.eval.max_samples,
                                on_error=on_error or cfg.data.on_error, **dataset_options(cfg))


def collator(bundle: ModelBundle):
    from vlft.data.classification import ImageLabelCollator

    return ImageLabelCollator()


def label_names(bundle: ModelBundle) -> list[str]:
    return bundle.extra["labels"]
