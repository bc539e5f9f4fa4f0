"""Put DoRA/LoRA adapters on a model through peft and report what trains."""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig, get_peft_model
from torch import nn

from vlft.adapters.dora import use_vlft_dora, vlft_dora_variants
from vlft.adapters.towers import TOWER_NAMES, TowerTargets, resolve_tower_targets, tower_method, tower_of
from vlft.config import AdaptersConfig

PEFT_PREFIX = "base_model.model."


def build_lora_config(targets: TowerTargets, cfg: AdaptersConfig) -> LoraConfig:
    target_modules = cfg.target_regex if cfg.target_regex else targets.adapted
    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.rslora,
        use_dora=targets.method == "dora", target_modules=target_modules,
        modules_to_save=targets.full or None, bias="none")


def apply_adapters(model: nn.Module, towers: dict[str, tuple[str, ...]], cfg: AdaptersConfig) -> nn.Module:
    """Return the model ready to train: a PeftModel when any tower uses lora/dora (or a regex is
    given), else the model itself with `full` towers trainable and the rest frozen."""
    targets = resolve_tower_targets(model, towers, cfg)
    if targets.method is None and not cfg.target_regex:
        for name, param in model.named_parameters():
            param.requires_grad = any(name.startswith(p + ".") for p in targets.full)
        return model
    if cfg.target_regex and targets.method is None:
        targets.method = "dora" if "dora" in (cfg.language, cfg.vision) else "lora"
    if targets.method == "dora" and cfg.dora_impl == "vlft":
        with vlft_dora_variants():  # layers resolve vlft's DoRA as peft builds them
            model = get_peft_model(model, build_lora_config(targets, cfg))
        use_vlft_dora(model)  # ...and so do adapters added to this model later
        return model
    return get_peft_model(model, build_lora_config(targets, cfg))


def base_param_name(name: str) -> str:
    name = name.removeprefix(PEFT_PREFIX)
    # peft's modules_to_save keeps the original next to the trained copy; count the module once.
    return name.replace(".modules_to_save.default", "")


@dataclass
class ParamCounts:
    total: int = 0
    trainable: int = 0


def count_parameters(model: nn.Module, towers: dict[str, tuple[str, ...]]) -> dict[str, ParamCounts]:
    """Parameters per tower and in total. peft's frozen copies of fully trained modules
    (`original_module`) are left out so that totals equal the model's real size plus adapters."""
    counts = {t: ParamCounts() for t in (*TOWER_NAMES, "other", "total")}
    for name, param in model.named_parameters():
        if ".original_module." in name:
            continue
        row = counts[tower_of(base_param_name(name), towers)]
        for c in (row, counts["total"]):
            c.total += param.numel()
            c.trainable += param.numel() if param.requires_grad else 0
    return counts


def format_parameter_table(counts: dict[str, ParamCounts], methods: dict[str, str] | None = None) -> str:
    """A plain-text table: tower, method, parameters, trainable, share of that tower."""
    methods = methods or {}
    lines = [f"{'tower':<10} {'method':<7} {'parameters':>15} {'trainable':>14} {'share':>8}"]
    for tower, c in counts.items():
        if c.total == 0 and tower != "total":
            continue
        share = 100.0 * c.trainable / c.total if c.total else 0.0
        lines.append(f"{tower:<10} {methods.get(tower, ''):<7} {c.total:>15,} {c.trainable:>14,} {share:>7.3f}%")
    return "\n".join(lines)


def trainable_summary(model: nn.Module, towers: dict[str, tuple[str, ...]], cfg: AdaptersConfig) -> tuple[str, dict]:
    counts = count_parameters(model, towers)
    methods = {t: tower_method(cfg, t, towers) for t in TOWER_NAMES}
    total = counts["total"]
    summary = {"trainable_params": total.trainable, "total_params": total.total,
               "trainable_percent": round(100.0 * total.trainable / max(total.total, 1), 4)}
    return format_parameter_table(counts, methods), summary
