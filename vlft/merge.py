"""`vlft merge <run_dir> <out_dir>`: fold a run's adapters into the base weights and write a standalone model.

DoRA and LoRA adapters (Linear and Conv2d, every tower) are folded with peft's own merge, the fully
trained modules (projector, head) are taken as trained, and the result is written in the family's native
format (see each family's `export_merged`): nothing of vlft or peft is needed to load it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vlft.models import get_family
from vlft.runs import load_run_config

MERGE_INFO = "vlft_merge.json"  # what was merged, from which run
# The run's config beside the merged weights: `vlft predict | chat | demo` read its prompt, image and video
# settings from here, so that a merged model answers as the run's evaluation did, wherever the run went.
RUN_CONFIG = "vlft_config.yaml"


def merge_run(run_dir: str | Path, out_dir: str | Path) -> dict:
    """Write the merged model of ``run_dir`` into ``out_dir``; return what was done."""
    from vlft.runs import load_trained, with_adapters_merged

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished vlft run (no config.yaml)")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; give a new directory")
    cfg = load_run_config(config_path, ["adapters.dora_impl=peft"])  # the merge is peft's own code
    bundle = load_trained(run_dir, cfg)
    model, adapters = with_adapters_merged(bundle.model)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    get_family(cfg.model.family).export_merged(model, bundle, staging)
    info = {"run": str(run_dir.resolve()), "family": cfg.model.family, "base": bundle.base_path,
            "merged_adapters": adapters, "methods": {t: getattr(cfg.adapters, t) for t in
                                                     ("language", "vision", "projector")}}
    (staging / MERGE_INFO).write_text(json.dumps(info, indent=1))
    shutil.copyfile(config_path, staging / RUN_CONFIG)
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)  # whole or not at all
    return {**info, "out": str(out_dir)}
