"""`vlft compare <run_dir> ...`: one row per run: method, rank, trainable share, wall time, peak memory,
final metrics."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vlft.markdown import markdown_table

TOWERS = ("language", "vision", "projector")


def method_of(adapters: dict) -> str:
    """e.g. `dora` when every trained tower but the projector uses DoRA, else `language=dora,vision=full`."""
    methods = {t: adapters.get(t) for t in TOWERS if adapters.get(t) not in (None, "frozen")}
    main = {m for t, m in methods.items() if t != "projector"}
    if len(main) == 1:
        return main.pop()
    return ",".join(f"{t}={m}" for t, m in methods.items()) or "frozen"


def run_row(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    metrics_path, config_path = run_dir / "metrics.json", run_dir / "config.yaml"
    if not metrics_path.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished vlft run (metrics.json and config.yaml are written "
                                "when training ends)")
    metrics = json.loads(metrics_path.read_text())
    cfg = yaml.safe_load(config_path.read_text())
    adapters = cfg.get("adapters", {})
    method = method_of(adapters)
    adapted = any(adapters.get(t) in ("lora", "dora") for t in TOWERS) or adapters.get("target_regex")
    row = {"run": run_dir.name, "method": method, "rank": adapters.get("r") if adapted else None,
           "trainable_percent": metrics.get("trainable_percent"), "wall_time_s": metrics.get("wall_time_s"),
           "peak_memory_mb": metrics.get("peak_memory_mb"), "train_loss": metrics.get("train_loss")}
    for key, value in (metrics.get("eval") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "runtime" not in key:
            row[key.removeprefix("eval_")] = value
    return row


def compare_runs(run_dirs: list[str]) -> str:
    return markdown_table([run_row(d) for d in run_dirs])
