"""Every example runs as a script and produces what its tutorial promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compinterp as ci

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


def test_fourier_modular_addition(tmp_path: Path) -> None:
    done = run("fourier_modular_addition.py", "--out", str(tmp_path), "--epochs", "400")
    assert done.returncode == 0, done.stderr
    n = json.loads((tmp_path / "fourier.json").read_text())
    assert n["p"] == 113 and n["held_out_accuracy"] > 0.95
    # the key frequencies are where the trained embeddings' spectrum is: recompute it with numpy
    model = ci.load(tmp_path / "model")
    E = np.concatenate([model.box_params(b)["W"].detach().numpy() for b in ("embed_a", "embed_b")], axis=1)
    energy = np.linalg.norm(np.fft.rfft(E, axis=0), axis=1)[1:]
    freqs = n["frequencies"]
    assert 2 <= len(freqs) <= 10
    assert sorted(int(f) + 1 for f in np.argsort(-energy)[:len(freqs)]) == freqs
    assert energy[np.array(freqs) - 1].min() > 2 * np.delete(energy, np.array(freqs) - 1).max()
    # the hypothesis is an algorithm for the task, agrees with the model, and the wrong frequencies fail
    assert n["explanation_accuracy"] >= 0.99 and n["top1_agreement"] >= 0.95
    assert n["product_formula_max_error"] < 1e-5
    assert n["faithfulness"] > 0.5 and n["control_faithfulness"] < min(0.2, n["faithfulness"] - 0.3)
    assert n["control_top1_agreement"] < 0.05 and abs(n["boxes"]["add"] - 1) < 1e-6
    assert n["worst_box"] == min(n["boxes"], key=n["boxes"].get)


def test_eigen_digits(tmp_path: Path) -> None:
    done = run("eigen_digits.py", "--out", str(tmp_path), "--budget", "30")
    assert done.returncode == 0, done.stderr
    n = json.loads((tmp_path / "eigen_digits.json").read_text())
    faith = [row["faithfulness"] for row in n["sweep"]]
    assert all(b >= a - 1e-3 for a, b in zip(faith, faith[1:])) and faith[-1] > 0.99
    bits = [row["bits"] for row in n["sweep"]]
    assert bits == sorted(bits)
    assert n["search"]["faithfulness"] >= 0.99 and n["search"]["bits"] < n["original_bits"]
    # the eigenvalues read off the refined model are those of each digit's quadratic form, built by hand
    model = ci.load(tmp_path / "model")
    p = {k: v.detach().double() for k, v in model.box_params("mlp").items()}
    U = model.box_params("unembed")["W"].detach().double()
    Q = torch.einsum("ch,hi,hj->cij", U @ p["D"], p["L"], p["R"])
    lam = torch.linalg.eigvalsh((Q + Q.transpose(1, 2)) / 2)
    top = lam.gather(1, lam.abs().argsort(1, descending=True))[:, :n["shown"]]
    assert torch.allclose(torch.tensor(n["eigenvalues"], dtype=torch.float64), top, atol=1e-4)
    assert (tmp_path / "eigenvectors.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_torch_module(tmp_path: Path) -> None:
    done = run("explain_torch_module.py", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    n = json.loads((tmp_path / "torch_module.json").read_text())
    kinds = {kind for _, kind in n["boxes"]}
    assert {"Linear", "Elementwise", "Bilinear", "Norm"} <= kinds and "Opaque" not in kinds
    assert n["import_max_abs_diff"] <= 1e-5 and n["held_out_accuracy"] > 0.95
    # the checker points at the wrong hypothesis; without it the explanation is faithful
    assert n["first"]["worst_box"] == "relu" and n["first"]["boxes"]["relu"] < 0.5
    assert n["second"]["worst_box"] == "bilinear"
    assert n["second"]["boxes"]["bilinear"] == pytest.approx(n["first"]["boxes"]["bilinear"])
    assert n["second"]["faithfulness"] > max(0.9, n["first"]["faithfulness"])


def test_induction_gpt2(tmp_path: Path) -> None:
    done = run("induction_gpt2.py", "--out", str(tmp_path), "--steps", "2", "--width", "32")
    assert done.returncode == 0, done.stderr
    n = json.loads((tmp_path / "induction.json").read_text())
    assert n["previous_head"][0] == "attn0" and n["induction_head"][0] == "attn1"
    assert "Attention" in n["boxes"] and 0 < n["bits_per_byte"] < 9
    assert n["explanation"]["end_to_end"]["faithfulness"] <= 1.0
