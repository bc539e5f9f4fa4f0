"""`vlft analyze <run_dir> ...`: the DoRA paper's weight-decomposition analysis (§2, Fig. 2).

For every trained Linear/Conv2d layer of the language and vision towers and every saved checkpoint of a
run (checkpoint-N directories and the final weights), the weight W' (adapters merged) is compared with the
base weight W0 channel by channel (one channel = one output row, a Conv2d kernel flattened):

    ΔM = mean_n | ‖W'_n‖ − ‖W0_n‖ |          (magnitude change)
    ΔD = mean_n ( 1 − cos(W'_n, W0_n) )      (direction change)

Each (layer, checkpoint) is one point. Per run: a CSV of the points, a scatter plot (the paper's axes: ΔD
across, ΔM up), and the least-squares slope of ΔM on ΔD with the Pearson correlation; the paper finds a
positive slope for LoRA and a negative one for full fine-tuning and DoRA.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vlft.adapters.towers import adaptable_layers, multihead_attention_parts, tower_method, tower_prefix
from vlft.runs import load_run_config

ANALYZED_TOWERS = ("language", "vision")


def decomposition_change(base: torch.Tensor, trained: torch.Tensor) -> tuple[float, float]:
    """(ΔM, ΔD) of one weight against its base, per output channel, averaged."""
    w0, w = base.flatten(1).double(), trained.flatten(1).double()
    delta_m = (w.norm(dim=1) - w0.norm(dim=1)).abs().mean()
    delta_d = (1 - F.cosine_similarity(w, w0, dim=1)).mean()
    return delta_m.item(), delta_d.item()


def fit_line(xs: list[float], ys: list[float]) -> dict:
    """Least-squares slope and intercept of ys on xs, and the Pearson correlation."""
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy, sxy = (dx * dx).sum(), (dy * dy).sum(), (dx * dy).sum()
    if len(xs) < 2 or sxx == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "pearson_r": float("nan"), "points": len(xs)}
    slope = sxy / sxx
    r = sxy / (sxx * syy).sqrt() if syy > 0 else torch.tensor(float("nan"))
    return {"slope": slope.item(), "intercept": (y.mean() - slope * x.mean()).item(), "pearson_r": r.item(),
            "points": len(xs)}


def analyzed_layers(model: torch.nn.Module, towers: dict, adapters_cfg, pattern: str | None) -> list[str]:
    """Linear/Conv2d layers of the trained language and vision towers (the layers DoRA would adapt)."""
    inside_attention = multihead_attention_parts(model)
    names = []
    for tower in ANALYZED_TOWERS:
        if tower not in towers or tower_method(adapters_cfg, tower, towers) == "frozen":
            continue
        names += adaptable_layers(model, tower_prefix(model, towers[tower]), inside_attention)
    return [n for n in names if pattern is None or re.search(pattern, n)]


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, weights directory) of every saved checkpoint and of the final weights, by step."""
    found = [(int(p.name.split("-")[1]), p) for p in run_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        final_step = json.loads(metrics.read_text()).get("global_step")
        if final_step is not None and all(step != final_step for step, _ in found):
            found.append((final_step, run_dir))
    return sorted(found)


def merged_weights(run_dir: Path, cfg, weights_dir: Path, layers: list[str] | None, pattern: str | None):
    """Weights of the analysed layers with the checkpoint's adapters merged; also the layer list."""
    from vlft.runs import load_trained, with_adapters_merged

    bundle = load_trained(run_dir, cfg, weights_dir=weights_dir)
    model, _ = with_adapters_merged(bundle.model)
    layers = layers if layers is not None else analyzed_layers(model, bundle.towers, cfg.adapters, pattern)
    return {n: model.get_submodule(n).weight.detach().clone() for n in layers}, layers


def base_weights(run_dir: Path, cfg, layers: list[str]) -> dict[str, torch.Tensor]:
    from vlft.models import get_family
    from vlft.runs import base_checkpoint

    model = get_family(cfg.model.family).load(cfg.model, base_checkpoint(run_dir, cfg)).model
    return {n: model.get_submodule(n).weight.detach().clone() for n in layers}


@dataclass
class RunAnalysis:
    run: str
    method: str
    points: list[dict]  # {"step", "layer", "delta_m", "delta_d"}
    fit: dict


def run_method(cfg) -> str:
    methods = {getattr(cfg.adapters, t) for t in ANALYZED_TOWERS} - {"frozen"}
    return "+".join(sorted(methods)) or "frozen"


def analyze_run(run_dir: str | Path, pattern: str | None = None) -> RunAnalysis:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished vlft run (no config.yaml)")
    cfg = load_run_config(run_dir / "config.yaml", ["adapters.dora_impl=peft"])
    saved = checkpoints(run_dir)
    if not saved:
        raise FileNotFoundError(f"{run_dir}: no checkpoint-N directories and no final weights to analyse")
    points, layers, base = [], None, None
    for step, weights_dir in saved:
        weights, layers = merged_weights(run_dir, cfg, weights_dir, layers, pattern)
        if not layers:
            raise ValueError(f"{run_dir}: no trained Linear/Conv2d layer in the language or vision tower"
                             + (f" matches --layers {pattern!r}" if pattern else ""))
        base = base if base is not None else base_weights(run_dir, cfg, layers)
        for layer in layers:
            delta_m, delta_d = decomposition_change(base[layer], weights[layer])
            points.append({"step": step, "layer": layer, "delta_m": delta_m, "delta_d": delta_d})
    fit = fit_line([p["delta_d"] for p in points], [p["delta_m"] for p in points])
    return RunAnalysis(run=str(run_dir), method=run_method(cfg), points=points, fit=fit)


def draw_analysis(ax, analysis: RunAnalysis, title: str):
    """The paper's axes on one panel: ΔD across, ΔM up, one dot per (layer, checkpoint), and the fitted line."""
    steps = [p["step"] for p in analysis.points]
    dots = ax.scatter([p["delta_d"] for p in analysis.points], [p["delta_m"] for p in analysis.points], c=steps,
                      cmap="viridis", s=18)
    fit = analysis.fit
    if fit["slope"] == fit["slope"]:  # not NaN
        xs = torch.linspace(min(p["delta_d"] for p in analysis.points), max(p["delta_d"] for p in analysis.points), 2)
        ax.plot(xs, fit["slope"] * xs + fit["intercept"], color="black", lw=1,
                label=f"slope {fit['slope']:.3g}, r {fit['pearson_r']:.2f}")
        ax.legend(loc="best")
    ax.set_xlabel("ΔD (direction change)")
    ax.set_ylabel("ΔM (magnitude change)")
    ax.set_title(title)
    return dots


def plot_analyses(analyses: dict[str, RunAnalysis], path: Path) -> None:
    """One panel per analysed run (the title its key), side by side, as the paper's Fig. 2 sets its methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(analyses), figsize=(5.5 * len(analyses), 4.5), squeeze=False)
    for ax, (title, analysis) in zip(axes[0], analyses.items(), strict=True):
        dots = draw_analysis(ax, analysis, title)
    fig.colorbar(dots, ax=axes[0].tolist(), label="step")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_run(analysis: RunAnalysis, path: Path) -> None:
    plot_analyses({f"{Path(analysis.run).name} ({analysis.method})": analysis}, path)


def write_analysis(analysis: RunAnalysis, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "weight_decomposition.csv", "png": out_dir / "weight_decomposition.png",
             "json": out_dir / "weight_decomposition.json"}
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "layer", "delta_m", "delta_d"])
        writer.writeheader()
        writer.writerows(analysis.points)
    paths["json"].write_text(json.dumps({"run": analysis.run, "method": analysis.method, **analysis.fit}, indent=1))
    plot_run(analysis, paths["png"])
    return paths
