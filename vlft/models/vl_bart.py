"""VL-BART family: transformers' BART with a CLIP visual encoder from open_clip (VL-T5 / VL-Adapter style).

The image's grid features (a ResNet's last stage, or a ViT's patch tokens) go through a projector
(Linear + LayerNorm) into BART's embedding space and are put in front of the text embeddings in the
encoder. Towers: `vision` (the CLIP encoder, end to end, so DoRA reaches its Conv2d and Linear
layers), `projector`, `language` (BART). The CLIP tower's BatchNorm statistics stay frozen.

A vlft VL-BART checkpoint is a directory: `vl_bart.json` {"bart_config", "vision", "image"} and
`model.safetensors`. `load` reads one, or builds from names: BART by `name_or_path` (e.g.
`facebook/bart-base`) and the CLIP encoder by `model.vision_tower` (`RN101:openai`, `ViT-B-32:openai`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from safetensors.torch import load_model, save_model
from torch import nn
from torchvision import transforms
from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

from vlft.config import ModelConfig, TinyModelConfig
from vlft.data.seq2seq import MAX_IMAGES
from vlft.models.base import ModelBundle, ModelLoadError
from vlft.models.tokenizer import build_word_tokenizer

TOWERS = {"vision": ("vision",), "projector": ("projector",), "language": ("language.model",)}  # lm_head: tied, frozen
CONFIG_FILE = "vl_bart.json"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def grid_features(vision: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, N, C) features before pooling: a ResNet's last stage cells, or a ViT's patch tokens."""
    if isinstance(vision, ModifiedResNet):
        x = vision.stem(pixel_values.to(vision.conv1.weight.dtype))
        x = vision.layer4(vision.layer3(vision.layer2(vision.layer1(x))))
        return x.flatten(2).transpose(1, 2)
    vision.output_tokens = True
    _, tokens = vision(pixel_values)
    return tokens


class Projector(nn.Module):
    """Linear + LayerNorm into BART's width, plus a learned embedding of each image's place in the
    record (NLVR2's left and right image), zero at start so that one image sees Linear + LayerNorm alone."""

    def __init__(self, feature_dim: int, d_model: int, max_images: int = MAX_IMAGES):
        super().__init__()
        self.linear, self.norm = nn.Linear(feature_dim, d_model), nn.LayerNorm(d_model)
        self.image_index = nn.Embedding(max_images, d_model)
        nn.init.zeros_(self.image_index.weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, images, N, C) -> (B, images * N, d_model)."""
        x = self.norm(self.linear(features)) + self.image_index.weight[: features.shape[1], None, :]
        return x.flatten(1, 2)


class VLBart(nn.Module):
    def __init__(self, language: BartForConditionalGeneration, vision: nn.Module, feature_dim: int):
        super().__init__()
        self.vision = vision
        if isinstance(vision, ModifiedResNet):
            vision.attnpool = nn.Identity()  # grid features skip the pooling head: no idle parameters
        self.projector = Projector(feature_dim, language.config.d_model)
        self.language = language
        self.config = language.config  # what the Trainer and peft look up

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.vision.modules():  # frozen statistics: the base model must not drift
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def encoder_inputs(self, input_ids, attention_mask, pixel_values=None, image_mask=None, visual_features=None):
        """Visual tokens of every image, then the text. pixel_values: (B, C, H, W) or, with several
        images per record, (B, images, C, H, W) with image_mask (B, images) marking the real ones;
        or visual_features (B, images, cells, channels), pre-extracted by the same vision tower."""
        if visual_features is None:
            if pixel_values.dim() == 4:
                pixel_values = pixel_values.unsqueeze(1)
            batch, images = pixel_values.shape[:2]
            cells = grid_features(self.vision, pixel_values.flatten(0, 1))
            visual_features = cells.unflatten(0, (batch, images))
        batch, images = visual_features.shape[:2]
        if image_mask is None:
            image_mask = attention_mask.new_ones(batch, images)
        visual = self.projector(visual_features.to(self.projector.linear.weight.dtype))
        text = self.language.get_encoder().embed_tokens(input_ids)
        visual_mask = image_mask.to(attention_mask.dtype).repeat_interleave(visual_features.shape[2], dim=1)
        mask = torch.cat([visual_mask, attention_mask], dim=1)
        embeds = torch.cat([visual.to(text.dtype), text], dim=1)
        if bool((mask == 0).any()):  # padding last, real tokens in order: BART's positions as if unpadded
            order = torch.sort(1 - mask, dim=1, stable=True).indices
            embeds = embeds.gather(1, order.unsqueeze(-1).expand_as(embeds))
            mask = mask.gather(1, order)
        return embeds, mask

    def forward(self, input_ids, attention_mask, pixel_values=None, labels=None, image_mask=None,
                visual_features=None, **_):
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, pixel_values, image_mask, visual_features)
        return self.language(inputs_embeds=embeds, attention_mask=mask, labels=labels)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values=None, image_mask=None, visual_features=None,
                 **kwargs):
        embeds, mask = self.encoder_inputs(input_ids, attention_mask, pixel_values, image_mask, visual_features)
        return self.language.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)


def image_transform(size: int, mean=CLIP_MEAN, std=CLIP_STD):
    return transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(mean, std)])


class ClipImageProcessor:
    """open_clip's eval preprocessing behind the call signature of a transformers image processor."""

    def __init__(self, image: dict):
        self.image = image
        self.transform = image_transform(image["size"], image["mean"], image["std"])

    def __call__(self, image, return_tensors: str = "pt") -> dict:
        return {"pixel_values": self.transform(image).unsqueeze(0)}

    def save_pretrained(self, directory) -> None:
        (Path(directory) / "preprocessor_config.json").write_text(json.dumps({"clip_image": self.image}, indent=1))


def _vision_from_spec(spec: dict) -> tuple[nn.Module, int]:
    if "tiny_resnet" in spec:
        args = spec["tiny_resnet"]
        vision = ModifiedResNet(layers=args["layers"], output_dim=args["width"] * 32, heads=2,
                                image_size=args["image_size"], width=args["width"])
        return vision, args["width"] * 32
    vision = open_clip.create_model(spec["open_clip"], pretrained=spec.get("pretrained")).visual
    dim = vision.layer4[-1].conv3.out_channels if isinstance(vision, ModifiedResNet) else vision.transformer.width
    return vision, dim


def _bundle(model: VLBart, tokenizer, image: dict, path: str, dtype: str) -> ModelBundle:
    return ModelBundle(model=model.to(getattr(torch, dtype)), tokenizer=tokenizer,
                       image_processor=ClipImageProcessor(image), template=None, num_image_tokens=0,
                       image_token_id=-1, towers=TOWERS, base_path=path)


def load(model_cfg: ModelConfig, path: str, with_model: bool = True) -> ModelBundle:
    directory = Path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if (directory / CONFIG_FILE).is_file():
            spec = json.loads((directory / CONFIG_FILE).read_text())
            vision, dim = _vision_from_spec(spec["vision"])
            model = VLBart(BartForConditionalGeneration(BartConfig(**spec["bart_config"])), vision, dim)
            load_model(model, str(directory / "model.safetensors"))  # tied BART embeddings are stored once
            return _bundle(model, tokenizer, spec["image"], path, model_cfg.dtype)
        if not model_cfg.vision_tower:
            raise ModelLoadError("vl_bart: set model.vision_tower to an open_clip model and tag, e.g. RN101:openai")
        name, _, tag = model_cfg.vision_tower.partition(":")
        vision, dim = _vision_from_spec({"open_clip": name, "pretrained": tag or None})
        model = VLBart(BartForConditionalGeneration.from_pretrained(path), vision, dim)
    except OSError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load VL-BART '{path}': not a local checkpoint directory and not reachable on "
                             f"the model hub ({reason})") from None
    size = vision.image_size[0] if isinstance(vision.image_size, tuple) else vision.image_size
    return _bundle(model, tokenizer, {"size": size, "mean": CLIP_MEAN, "std": CLIP_STD}, path, model_cfg.dtype)


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
        forced_eos_token_id=None, scale_embedding=True, init_std=tiny.text_hidden_size ** -0.5).to_dict()
    torch.manual_seed(tiny.seed)
    vision, dim = _vision_from_spec(vision_spec)
    model = VLBart(BartForConditionalGeneration(BartConfig(**bart_config)), vision, dim)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    save_model(model, str(out_dir / "model.safetensors"))
    spec = {"bart_config": bart_config, "vision": vision_spec,
            "image": {"size": tiny.image_size, "mean": CLIP_MEAN, "std": CLIP_STD}}
    (out_dir / CONFIG_FILE).write_text(json.dumps(spec, indent=1, default=str))
    return out_dir


# The hooks every family gives the training loop (see vlft/models/__init__.py).

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
    from vlft.data.seq2seq import QuestionAnswerDataset

    return QuestionAnswerDataset(cfg.data.train, bundle, cfg.data.image_folder, cfg.data.max_length,
                                 on_error=on_error or cfg.data.on_error, features=feature_store(cfg))


def eval_dataset(cfg, bundle: ModelBundle, on_error: str | None = None):
    from vlft.data.seq2seq import QuestionAnswerDataset

    return QuestionAnswerDataset(cfg.data.eval, bundle, cfg.data.image_folder, cfg.data.max_length,
                                 cfg.eval.max_samples, on_error=on_error or cfg.data.on_error, for_eval=True,
                                 features=feature_store(cfg))


def collator(bundle: ModelBundle):
    from vlft.data.seq2seq import Seq2SeqCollator

    return Seq2SeqCollator(bundle.tokenizer.pad_token_id)


def evaluate(model, bundle: ModelBundle, cfg, device="cpu", synced_gpus: bool = False, predictions_path=None) -> dict:
    from vlft.data.seq2seq import Seq2SeqCollator
    from vlft.eval.evaluator import evaluate_vqa

    return evaluate_vqa(model, bundle, cfg, device=device, synced_gpus=synced_gpus, predictions_path=predictions_path,
                        dataset=eval_dataset(cfg, bundle),
                        collate_fn=Seq2SeqCollator(bundle.tokenizer.pad_token_id, for_generation=True),
                        decoder_only=False)
