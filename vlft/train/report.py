"""What a run leaves for people to read: peak memory, the log history, and a PNG of loss and eval metrics."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch
import torch.distributed as dist


def peak_memory_mb() -> dict:
    """Peak memory of this run, the largest over ranks: CUDA allocated memory, else resident memory (RSS)."""
    if torch.cuda.is_available():
        value, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda_allocated"
    else:
        value, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_rss"  # Linux: KiB
    if dist.is_available() and dist.is_initialized():
        peak = torch.tensor([value], dtype=torch.float64,
                            device="cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        value = peak.item()
    return {"peak_memory_mb": round(value, 1), "peak_memory_kind": kind}


def curves(log_history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series: the training loss, and every numeric eval metric."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            wanted = key == "loss" or (key.startswith("eval_") and not key.endswith(("_runtime", "per_second")))
            if step is not None and wanted and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append((step, float(value)))
    return series


def write_training_report(log_history: list[dict], out_dir: str | Path) -> Path | None:
    """`log_history.json` and `training_curves.png` (loss, and each eval metric, against the step)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "log_history.json").write_text(json.dumps(log_history, indent=1))
    series = curves(log_history)
    if not series:
        return None
    names = ["loss", *sorted(k for k in series if k != "loss")] if "loss" in series else sorted(series)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.4 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        steps, values = zip(*series[name], strict=True)
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None)
        ax.set_ylabel(name.removeprefix("eval_"))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(out_dir.name)
    fig.tight_layout()
    path = out_dir / "training_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
