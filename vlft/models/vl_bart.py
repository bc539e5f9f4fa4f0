"""VL-BART family: transformers' BART with a CLIP visual encoder from open_clip (VL-T5 / VL-Adapter style).

The image's grid features (a ResNet's last stage, or a ViT's patch tokens) go through a projector
(Linear + LayerNorm) into BART's embedding space and are put in front of the text embeddings in the
encoder. Towers: `vision` (the CLIP encoder, end to end, so DoRA reaches its Conv2d and Linear
layers), `projector`, `language` (BART). The CLIP tower's BatchNorm statistics stay frozen.

A vlft VL-BART checkpoint is a directory: `vl_bart.json` {"bart_config", "vision", "image"} and
`model.safetensors` (a tiny build), or the layout `vlft merge` writes (see vl_bart_modeling.py). `load`
reads either, or builds from names: BART by `name_or_path` (e.g.
`facebook/bart-base`) and the CLIP encoder by `model.vision_tower` (`RN101:openai`, `ViT-B-32:openai`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn
from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

from vlft.config import ModelConfig, TinyModelConfig
from vlft.models.base import ModelBundle, ModelLoadError
from vlft.models.tokenizer import build_word_tokenizer
from vlft.models.vl_bart_modeling import (
    CLIP_MEAN,
    CLIP_STD,
    CONFIG_FILE,
    MAX_IMAGES,
    VLBart,
    image_transform,
    load_matching,
    load_merged,
    save_merged,
    vision_from_spec,
)

TOWERS = {"vision": ("vision",), "projector": ("projector",), "language": ("language.model",)}  # lm_head: tied, frozen
# a vlft VL-BART directory, or a BART checkpoint to pair with model.vision_tower
MODEL_FILES = ("vl_bart.json", "config.json")
DATA_OPTIONS = frozenset({"features", "group_by_record"})


class ClipImageProcessor:
    """open_clip's eval preprocessing behind the call signature of a transformers image processor."""

    def __init__(self, image: dict):
        self.image = image
        self.transform = image_transform(image["size"], image["mean"], image["std"])

    def __call__(self, image, return_tensors: str = "pt") -> dict:
        return {"pixel_values": self.transform(image).unsqueeze(0)}

    def save_pretrained(self, directory) -> None:
        (Path(directory) / "preprocessor_config.json").write_text(json.dumps({"clip_image": self.image}, indent=1))


def _bundle(model: VLBart, tokenizer, image: dict, vision_spec: dict, path: str, dtype: str) -> ModelBundle:
    return ModelBundle(model=model.to(getattr(torch, dtype)), tokenizer=tokenizer,
                       image_processor=ClipImageProcessor(image), towers=TOWERS, base_path=path,
                       extra={"vision_spec": vision_spec, "max_images": MAX_IMAGES})


def _load_directory(model_cfg: ModelConfig, directory: Path) -> ModelBundle:
    """A vlft VL-BART directory: a tiny build (one model.safetensors) or a merged model (BART in language/)."""
    spec = json.loads((directory / CONFIG_FILE).read_text())
    if "language" in spec:
        model, tokenizer, _ = load_merged(directory)
    else:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        vision, dim = vision_from_spec(spec["vision"])
        model = VLBart(BartForConditionalGeneration(BartConfig(**spec["bart_config"])), vision, dim)
        try:  # e.g. a build older than the box LayerNorm
            load_matching(model, directory / "model.safetensors")
        except RuntimeError as err:
            raise ModelLoadError(str(err)) from None
    return _bundle(model, tokenizer, spec["image"], spec["vision"], str(directory), model_cfg.dtype)


def load(model_cfg: ModelConfig, path: str, with_model: bool = True) -> ModelBundle:
    directory = Path(path)
    try:
        if (directory / CONFIG_FILE).is_file():
            return _load_directory(model_cfg, directory)
        if not model_cfg.vision_tower:
            raise ModelLoadError("vl_bart: set model.vision_tower to an open_clip model and tag, e.g. RN101:openai")
        tokenizer = AutoTokenizer.from_pretrained(path)
        name, _, tag = model_cfg.vision_tower.partition(":")
        vision_spec = {"open_clip": name, "pretrained": tag or None}
        vision, dim = vision_from_spec(vision_spec)
        model = VLBart(BartForConditionalGeneration.from_pretrained(path), vision, dim)
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load VL-BART '{path}': not a local checkpoint directory and not reachable on "
                             f"the model hub ({reason})") from None
    size = vision.image_size[0] if isinstance(vision.image_size, tuple) else vision.image_size
    image = {"size": size, "mean": CLIP_MEAN, "std": CLIP_STD}
    return _bundle(model, tokenizer, image, vision_spec, path, model_cfg.dtype)


def export_merged(model: VLBart, bundle: ModelBundle, out_dir: str | Path) -> None:
    """BART through save_pretrained, the CLIP encoder and projector in safetensors, and the model's code
    (modeling_vl_bart.py), which needs neither vlft nor peft to load it."""
    import shutil

    from vlft.models import vl_bart_modeling

    save_merged(model, bundle.tokenizer, bundle.extra["vision_spec"], bundle.image_processor.image, out_dir)
    bundle.image_processor.save_pretrained(out_dir)
    shutil.copyfile(vl_bart_modeling.__file__, Path(out_dir) / "modeling_vl_bart.py")


def keep_signal_scale(vision: nn.Module) -> None:
    """He-initialise the random ResNet's convolutions. Its BatchNorms hold their initial statistics (an
    identity) and stay frozen, so at PyTorch's default init every conv shrinks the signal about 3x: the last
    stage's features came out ~1000x weaker than the pixels, and nearly the same for every frame."""
    for module in vision.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")


def build_tiny(tiny: TinyModelConfig, texts: Iterable[str], out_dir: str | Path) -> Path:
    """A small random-init VL-BART (CLIP ResNet with 4 one-block stages, 2+2-layer BART) in ``out_dir``."""
    tokenizer = build_word_tokenizer(texts, extra_words=["vqa", "gqa", "nlvr", "caption", ":"])
    width = max(8, tiny.vision_hidden_size // 4)
    vision_spec = {"tiny_resnet": {"layers": [1, 1, 1, 1], "width": width, "image_size": tiny.image_size}}
    bart_config = BartConfig(
        vocab_size=len(tokenizer), d_model=tiny.text_hidden_size, encoder_layers=tiny.text_layers,
        decoder_layers=tiny.text_layers, encoder_attention_heads=tiny.num_heads,
        decoder_attention_heads=tiny.num_heads,
        encoder_ffn_dim=4 * tiny.text_hidden_size, decoder_ffn_dim=4 * tiny.text_hidden_size,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=None, scale_embedding=True, init_std=tiny.text_hidden_size ** -0.5,
        **({"dropout": tiny.dropout} if tiny.dropout is not None else {})).to_dict()
    torch.manual_seed(tiny.seed)
    vision, dim = vision_from_spec(vision_spec)
    keep_signal_scale(vision)
    model = VLBart(BartForConditionalGeneration(BartConfig(**bart_config)), vision, dim)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    save_model(model, str(out_dir / "model.safetensors"))
    spec = {"bart_config": bart_config, "vision": vision_spec,
            "image": {"size": tiny.image_size, "mean": CLIP_MEAN, "std": CLIP_STD}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(spec, indent=1, default=str))
    return out_dir


# The hooks every family gives (vlft.models.contract).

def build_tiny_for_run(cfg, out_dir: str | Path) -> Path:
    from vlft.models.llava import training_texts  # the same conversation records give the vocabulary

    return build_tiny(cfg.model.tiny, training_texts(cfg), out_dir)


def load_for_run(cfg, path: str, with_model: bool = True) -> ModelBundle:
    return load(cfg.model, path, with_model)


def feature_store(cfg):
    """data.features: visual features pre-extracted by data_prep/extract_clip_features.py, or None."""
    from vlft.data.features import FeatureStore

    return FeatureStore(cfg.data.features) if cfg.data.features else None


def train_dataset(cfg, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.cache import dataset_options
    from vlft.data.seq2seq import QuestionAnswerDataset

    return QuestionAnswerDataset(cfg.data.train, bundle, cfg.data.image_folder, cfg.data.max_length,
                                 on_error=on_error or cfg.data.on_error, features=feature_store(cfg),
                                 group_by_record=cfg.data.group_by_record, **dataset_options(cfg))


def eval_dataset(cfg, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.cache import dataset_options
    from vlft.data.seq2seq import QuestionAnswerDataset

    return QuestionAnswerDataset(cfg.data.eval, bundle, cfg.data.image_folder, cfg.data.max_length,
                                 cfg.eval.max_samples, on_error=on_error or cfg.data.on_error, for_eval=True,
                                 features=feature_store(cfg), **dataset_options(cfg))


def collator(bundle: ModelBundle):
    from vlft.data.seq2seq import Seq2SeqCollator

    return Seq2SeqCollator(bundle.tokenizer.pad_token_id)


def generation_options(model, bundle: ModelBundle) -> dict:
    """How generate_answers feeds this family's eval batches to ``model.generate`` (also used by `vlft predict`,
    `chat` and `demo`): the seq2seq collator's generation batches."""
    from vlft.data.seq2seq import Seq2SeqCollator

    return {"collate_fn": Seq2SeqCollator(bundle.tokenizer.pad_token_id, for_generation=True)}


