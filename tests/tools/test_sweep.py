"""`vlft sweep`: the grid it plans, its mean ± std table, and a restart that skips finished runs."""

import csv
import json
import math

import pytest
import yaml

from tests.conftest import tiny_config_dict
from vlft.config import config_from_dict
from vlft.sweep import plan, run_sweep, summarize


def test_plan_names_runs_and_keeps_alpha_over_rank(tmp_path, shapes_data):
    raw = tiny_config_dict(shapes_data, tmp_path / "run")
    raw["adapters"].update(r=4, alpha=8, vision="frozen")
    raw["sweep"] = {"methods": ["dora", "full", "lora"], "ranks": [2, 16], "seeds": 2,
                    "method_overrides": {"full": ["training.lr=1e-4"]}}
    runs = plan(config_from_dict(raw), tmp_path / "sweep")
    assert [r.name for r in runs] == ["full-s7", "full-s8", "dora-r2-s7", "dora-r2-s8", "dora-r16-s7", "dora-r16-s8",
                                      "lora-r2-s7", "lora-r2-s8", "lora-r16-s7", "lora-r16-s8"]
    full, dora16 = runs[0], runs[5]
    assert "adapters.language=full" in full.overrides and "training.lr=1e-4" in full.overrides
    assert not any(o.startswith("adapters.vision") for o in full.overrides)  # only the config's adapted towers
    assert {"adapters.r=16", "adapters.alpha=32.0", "training.seed=8"} <= set(dora16.overrides)


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [{"method": "dora", "rank": 4, "seed": s, "vqa_accuracy": v} for s, v in ((0, 50.0), (1, 54.0), (2, 58.0))]
    (entry,) = summarize(rows)
    assert entry["seeds"] == 3 and entry["vqa_accuracy"] == pytest.approx((54.0, 4.0))


@pytest.mark.integration
@pytest.mark.slow  # a whole sweep twice: kept for the slow run (.ci/run)
def test_restarted_sweep_skips_finished_runs(tmp_path, shapes_data, capsys):
    raw = tiny_config_dict(shapes_data, tmp_path / "run", max_steps=2, save_steps=100)
    raw["adapters"]["vision"] = "frozen"
    raw["sweep"] = {"methods": ["full", "dora"], "ranks": [2], "seeds": 1, "output_dir": str(tmp_path / "sweep")}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(raw))
    paths = run_sweep(str(config))
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(r["run"], r["method"], r["rank"]) for r in rows] == [("full-s7", "full", ""), ("dora-r2-s7", "dora", "2")]
    for row in rows:  # each row carries its run's own eval accuracy and analysed slope, not a placeholder
        run_dir = tmp_path / "sweep" / row["run"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        fit = json.loads((run_dir / "weight_decomposition.json").read_text())
        assert float(row["vqa_accuracy"]) == metrics["eval"]["eval_vqa_accuracy"]
        assert math.isfinite(fit["slope"]) and float(row["decomposition_slope"]) == pytest.approx(fit["slope"])
        assert float(row["decomposition_r"]) == pytest.approx(fit["pearson_r"])
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert paths["decomposition_png"].read_bytes()[:4] == b"\x89PNG"
    assert "| full | - | 1 |" in paths["md"].read_text()

    finished = tmp_path / "sweep" / "full-s7" / "metrics.json"
    before = finished.stat().st_mtime_ns
    (tmp_path / "sweep" / "dora-r2-s7" / "metrics.json").unlink()  # as if the sweep was killed during this run
    capsys.readouterr()
    run_sweep(str(config), analyze=False)
    log = capsys.readouterr().out
    assert "full-s7: finished before, skipped (1/2)" in log
    assert "dora-r2-s7: " in log and "dora-r2-s7: finished before" not in log
    assert finished.stat().st_mtime_ns == before
    assert (tmp_path / "sweep" / "dora-r2-s7" / "metrics.json").is_file()
