"""Resolve towers (`language`, `vision`, `projector`, `head`) to the modules DoRA/LoRA can wrap."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from vlft.config import AdaptersConfig

ADAPTABLE_TYPES = (nn.Linear, nn.Conv2d)
TOWER_NAMES = ("language", "vision", "projector", "head")


@dataclass
class TowerTargets:
    """The outcome of tower resolution, ready for a peft LoraConfig."""

    adapted: list[str] = field(default_factory=list)  # Linear/Conv2d module names given lora or dora
    full: list[str] = field(default_factory=list)  # module prefixes trained in full
    method: str | None = None  # "lora" | "dora" | None when nothing is adapted


def tower_of(name: str, towers: dict[str, tuple[str, ...]]) -> str:
    """Which tower a module or parameter name belongs to ("other" for e.g. lm_head)."""
    for tower, prefixes in towers.items():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return tower
    return "other"


def tower_method(cfg: AdaptersConfig, tower: str, towers: dict[str, tuple[str, ...]]) -> str:
    """The configured method; an unset (None) head is trained in full where the model has one."""
    method = getattr(cfg, tower)
    if method is None:
        return "full" if tower in towers else "frozen"
    return method


def tower_prefix(model: nn.Module, prefixes: tuple[str, ...]) -> str | None:
    names = dict(model.named_modules())
    return next((p for p in prefixes if p in names), None)


def multihead_attention_parts(model: nn.Module) -> set[str]:
    """Linear modules inside nn.MultiheadAttention (e.g. open_clip's ViT): it reads their weights directly,
    so a LoRA/DoRA wrapper there would never run; they are left out (the rest of the tower is adapted)."""
    return {f"{name}.{child}" for name, module in model.named_modules()
            if isinstance(module, nn.MultiheadAttention) for child, _ in module.named_modules() if child}


def adaptable_layers(model: nn.Module, prefix: str, excluded: set[str]) -> list[str]:
    """Names of the nn.Linear and nn.Conv2d modules under ``prefix``, less ``excluded``."""
    return [name for name, module in model.named_modules()
            if name.startswith(prefix + ".") and isinstance(module, ADAPTABLE_TYPES) and name not in excluded]


def resolve_tower_targets(model: nn.Module, towers: dict[str, tuple[str, ...]], cfg: AdaptersConfig) -> TowerTargets:
    """Map each tower's method to concrete module names.

    lora/dora towers contribute every nn.Linear and nn.Conv2d inside them (a CLIP patch
    embedding is a Conv2d); full towers are trained whole. Raises ValueError when a tower
    is missing from the model or lora and dora are mixed.
    """
    targets = TowerTargets()
    adapted_methods = set()
    inside_attention = multihead_attention_parts(model)
    for tower in TOWER_NAMES:
        method = tower_method(cfg, tower, towers)
        if method == "frozen":
            continue
        prefix = tower_prefix(model, towers.get(tower, ()))
        if prefix is None:
            raise ValueError(f"adapters.{tower}: the model has no {tower} tower (looked for {towers.get(tower)})")
        if method == "full":
            targets.full.append(prefix)
            continue
        adapted_methods.add(method)
        targets.adapted += adaptable_layers(model, prefix, inside_attention)
    if len(adapted_methods) > 1:
        raise ValueError("adapters: one run uses either lora or dora on its adapted towers, not both "
                         f"(got {', '.join(f'{t}: {tower_method(cfg, t, towers)}' for t in TOWER_NAMES)})")
    targets.method = adapted_methods.pop() if adapted_methods else None
    return targets
