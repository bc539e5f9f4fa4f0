"""`vlft sweep <config>`: full fine-tuning vs LoRA vs DoRA across ranks and seeds, one normal run each.

The grid comes from the config's `sweep` block or the command line. Runs go one after another, each in
its own process and its own run directory (`<method>-r<rank>-s<seed>`, `full-s<seed>`); a run whose
metrics.json exists is finished and skipped, so an interrupted sweep restarts where it stopped (a run cut
short resumes from its newest checkpoint when the config says `training.resume: auto`). At the end:
`sweep.csv` (one row per run), `sweep.md` (mean ± std over seeds), `sweep.png` (the main metric against
rank, one line per method, full fine-tuning as a horizontal band), `sweep_decomposition.png` (ΔM against ΔD,
one panel per method) and, per run, the weight-decomposition analysis with its slope and correlation in the
tables.
"""

from __future__ import annotations

import csv
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vlft.compare import run_row
from vlft.config import RunConfig, load_config
from vlft.markdown import markdown_table

ADAPTED_TOWERS = ("language", "vision")
MAIN_METRICS = ("vqa_accuracy", "top1_accuracy", "caption_CIDEr")


class SweepRunFailed(RuntimeError):
    """One run of `vlft sweep` exited with an error; the message names it."""


@dataclass
class SweepRun:
    method: str
    rank: int | None
    seed: int
    directory: Path
    overrides: list[str]

    @property
    def name(self) -> str:
        return self.directory.name


def swept_towers(cfg: RunConfig) -> list[str]:
    if cfg.sweep.towers:
        return list(cfg.sweep.towers)
    towers = [t for t in ADAPTED_TOWERS if getattr(cfg.adapters, t) in ("lora", "dora")]
    if not towers:
        raise ValueError("sweep: the config adapts no tower with lora/dora; set sweep.towers (e.g. [language])")
    return towers


def plan(cfg: RunConfig, out_dir: Path) -> list[SweepRun]:
    """Every run of the grid, in the order they run: full fine-tuning first, then by rank, method, seed."""
    towers = swept_towers(cfg)
    alpha_per_rank = cfg.adapters.alpha / cfg.adapters.r
    runs = []
    for method in sorted(cfg.sweep.methods, key=lambda m: m != "full"):
        ranks = [None] if method == "full" else cfg.sweep.ranks
        for rank in ranks:
            for k in range(cfg.sweep.seeds):
                seed = cfg.training.seed + k
                name = f"full-s{seed}" if rank is None else f"{method}-r{rank}-s{seed}"
                directory = out_dir / name
                overrides = [f"adapters.{t}={method}" for t in towers]
                overrides += [f"training.seed={seed}", f"training.output_dir={directory}"]
                if rank is not None:
                    overrides += [f"adapters.r={rank}", f"adapters.alpha={alpha_per_rank * rank}"]
                overrides += cfg.sweep.method_overrides.get(method, [])
                runs.append(SweepRun(method, rank, seed, directory, overrides))
    return runs


def finished(run: SweepRun) -> bool:
    return (run.directory / "metrics.json").is_file()


def launch(config: str, run: SweepRun, user_overrides: list[str], launcher: list[str]) -> None:
    """One training run in its own process (a DeepSpeed launcher when given)."""
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "train.py")
    target = [sys.executable, "-m", "vlft.cli", "train"] if not launcher else [*launcher, script]
    command = [*target, config, *user_overrides, *run.overrides]
    print(f"sweep: {run.name}: {shlex.join(command)}", flush=True)
    result = subprocess.run(command)
    if result.returncode != 0:
        raise SweepRunFailed(f"sweep: run {run.name} failed with exit status {result.returncode}; fix it and run the "
                           "same sweep command again (finished runs are skipped)")


def main_metric(row: dict) -> str | None:
    return next((m for m in MAIN_METRICS if m in row), None)


def summarize(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds for each (method, rank)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["rank"]), []).append(row)
    numeric = [k for k in dict.fromkeys(k for row in rows for k in row)
               if k not in ("rank", "seed") and any(isinstance(row.get(k), (int, float)) for row in rows)]
    summary = []
    for (method, rank), members in groups.items():
        entry = {"method": method, "rank": rank, "seeds": len(members)}
        for key in numeric:
            values = [m[key] for m in members if isinstance(m.get(key), (int, float))]
            if values:
                entry[key] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        summary.append(entry)
    return summary


def mean_std_cell(value) -> str:
    """A (mean, std) pair of the summary as "mean ± std"; a seed count or a name as it is."""
    if isinstance(value, tuple):
        return f"{value[0]:.4g} ± {value[1]:.2g}"
    return "-" if value is None else str(value)


def plot(summary: list[dict], metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    full = next((e for e in summary if e["method"] == "full" and metric in e), None)
    if full:
        mean, std = full[metric]
        ax.axhspan(mean - std, mean + std, color="gray", alpha=0.25, lw=0)
        ax.axhline(mean, color="gray", lw=1, label=f"full fine-tuning ({mean:.3g})")
    for method in dict.fromkeys(e["method"] for e in summary if e["method"] != "full"):
        points = sorted((e["rank"], *e[metric]) for e in summary if e["method"] == method and metric in e)
        ranks, means, stds = zip(*points, strict=True)
        ax.errorbar(ranks, means, yerr=stds, marker="o", capsize=3, label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def analysis_of(run: SweepRun):
    """The run's weight-decomposition analysis, also written into its directory."""
    from vlft.analyze import analyze_run, write_analysis

    analysis = analyze_run(run.directory)
    write_analysis(analysis, run.directory)
    return analysis


def plot_decomposition(runs: list[SweepRun], analyses: dict, path: Path) -> None:
    """ΔM against ΔD, one panel per method (the paper's Fig. 2): its first seed, at the grid's middle rank."""
    from vlft.analyze import plot_analyses

    ranks = sorted({r.rank for r in runs if r.rank is not None})
    shown = ranks[len(ranks) // 2] if ranks else None
    panels, methods = {}, set()
    for run in runs:
        if run.name in analyses and run.rank in (None, shown) and run.method not in methods:
            methods.add(run.method)
            panels[run.method + (f" r{run.rank}" if run.rank else "") + f" seed {run.seed}"] = analyses[run.name]
    plot_analyses(panels, path)


def run_sweep(config: str, user_overrides: list[str] = (), launcher: list[str] = (), analyze: bool = True) -> dict:
    """Run (or finish) the grid; write sweep.csv, sweep.md and sweep.png; return their paths."""
    cfg = load_config(config, user_overrides)
    out_dir = Path(cfg.sweep.output_dir or cfg.training.output_dir.rstrip("/") + "_sweep")
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = plan(cfg, out_dir)
    for i, run in enumerate(runs, 1):
        if finished(run):
            print(f"sweep: {run.name}: finished before, skipped ({i}/{len(runs)})", flush=True)
            continue
        launch(config, run, list(user_overrides), list(launcher))
    rows, analyses = [], {}
    for run in runs:
        measured = {k: v for k, v in run_row(run.directory).items() if k not in ("run", "method", "rank")}
        row = {"run": run.name, "method": run.method, "rank": run.rank, "seed": run.seed, **measured}
        if analyze:
            analyses[run.name] = analysis_of(run)
            row["decomposition_slope"] = analyses[run.name].fit["slope"]
            row["decomposition_r"] = analyses[run.name].fit["pearson_r"]
        rows.append(row)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out_dir / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    (out_dir / "sweep.md").write_text(markdown_table(summary, mean_std_cell) + "\n")
    paths = {"csv": out_dir / "sweep.csv", "md": out_dir / "sweep.md"}
    if analyses:
        plot_decomposition(runs, analyses, out_dir / "sweep_decomposition.png")
        paths["decomposition_png"] = out_dir / "sweep_decomposition.png"
    metric = main_metric(rows[0])
    if metric:
        plot(summary, metric, out_dir / "sweep.png", out_dir.name)
        paths["png"] = out_dir / "sweep.png"
    return paths
