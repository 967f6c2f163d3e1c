"""Every example runs as a script and produces what its tutorial promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_quickstart(tmp_path: Path) -> None:
    done = run("quickstart.py", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    numbers = json.loads((tmp_path / "quickstart.json").read_text())
    assert numbers["held_out_accuracy"] >= 0.95
    assert numbers["reload_identical"] is True
    assert numbers["import_max_abs_diff"] <= 1e-5
    assert "Bilinear" in numbers["imported_box_kinds"] and "Opaque" not in numbers["imported_box_kinds"]
    assert numbers["top16_worst_box"] == "mlp"
    assert 0 < numbers["top16_faithfulness_digits"] < 1 and 0 < numbers["top16_faithfulness_exact_gaussian"] < 1
    assert 0.5 < numbers["top16_top1_agreement_digits"] < 1
    assert (tmp_path / "model.svg").read_text().lstrip().startswith("<?xml")
    assert {"diagram.json", "weights.safetensors", "meta.json"} <= {p.name for p in (tmp_path / "model").iterdir()}
