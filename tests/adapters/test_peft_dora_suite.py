"""peft's own DoRA tests (from its sdist: test_custom_models.py, test_initialization.py, test_helpers.py,
test_lora_variants.py, every case whose name says DoRA), run once on stock peft and once with every DoRA layer
resolving to vlft's variant: every case that passes on stock peft must pass with vlft's, DoraCaching's
included. `.ci/fetch_peft_tests` puts the files under .cache/peft-<version>/ (no network in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import peft
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
SUITE = Path(os.environ.get("VLFT_PEFT_TESTS", REPO / ".cache" / f"peft-{peft.__version__}"))
FILES = ["test_custom_models.py", "test_initialization.py", "test_helpers.py", "test_lora_variants.py"]
SELECT = "dora or Dora or DoRA"


def run_suite(tmp_path: Path, with_vlft: bool) -> dict[str, str]:
    """{test id: passed | failed | skipped} of peft's DoRA cases."""
    name = "vlft" if with_vlft else "stock"
    xml = tmp_path / f"{name}.xml"
    cmd = [sys.executable, "-m", "pytest", *(f"tests/{f}" for f in FILES), "-k", SELECT, "-q", "-o", "addopts=",
           "-p", "no:cacheprovider", f"--junitxml={xml}"]
    if with_vlft:
        cmd += ["-p", "peft_suite_plugin"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLFT_PEFT_SUITE_REPORT": str(tmp_path / "made.json"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "adapters"), str(REPO)])}
    subprocess.run(cmd, cwd=SUITE, env=env, capture_output=True, text=True, timeout=3600, check=False)
    outcomes = {}
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return outcomes


@pytest.mark.skipif(not (SUITE / "tests").is_dir(), reason=f"peft's tests are not fetched to {SUITE}: run "
                    ".ci/fetch_peft_tests (pip downloads peft's sdist)")
def test_every_dora_case_that_passes_on_stock_peft_passes_with_vlft_variants(tmp_path):
    stock = run_suite(tmp_path, with_vlft=False)
    vlft = run_suite(tmp_path, with_vlft=True)
    made = json.loads((tmp_path / "made.json").read_text())
    passed = sorted(t for t, outcome in stock.items() if outcome == "passed")
    print(f"peft {peft.__version__}: {len(stock)} DoRA cases, {len(passed)} pass on stock peft; with vlft's "
          f"variants {sum(o == 'passed' for o in vlft.values())} pass; layers given vlft's variants: {made}")
    assert len(passed) > 500 and made.get("VlftDoraLinearVariant", 0) > 500 and made.get("VlftDoraConv2dVariant")
    assert [t for t in passed if vlft.get(t) != "passed"] == []
    assert any("DoraCaching" in t and "conv" in t for t in passed)
