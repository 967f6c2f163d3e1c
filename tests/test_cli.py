"""The command line: help, version, info and draw on saved models, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import compinterp
from compinterp.cli import main
from compinterp.errors import FormatError
from compinterp.files import save
from compinterp.model import Model
from compinterp.syntax import Bilinear, Embed, Linear, Norm, Opaque, Space, chain, residual

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    r = Space("resid", 8)
    diagram = chain(Embed("embed", Space("tokens", 10), r), residual(Norm("ln", r) >> Bilinear("mlp", r, r, hidden=16)),
                    Opaque("op", r, r, module=nn.Sequential(nn.Linear(8, 8), nn.Tanh())),
                    Linear("out", r, Space("logits", 3), bias=True))
    return save(Model(diagram), tmp_path / "model")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"compinterp {compinterp.__version__}\n", "")
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "draw" in out and "info" in out and "compinterp draw runs/digits -o digits.svg" in out
    for command in ("draw", "info"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and f"example:\n  compinterp {command} " in out


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    assert run(capsys, )[0] == 2
    code, _, err = run(capsys, "draw", str(model_dir))
    assert code == 2 and "the following arguments are required: -o/--output" in err
    assert run(capsys, "frobnicate")[0] == 2


def test_info_table(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    code, out, err = run(capsys, "info", str(model_dir))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert "inputs  tokens:10" in lines and "outputs logits:3" in lines
    rows = {line.split()[0]: line.split() for line in lines if line.split()[:1] in (["mlp"], ["op"], ["copy"])}
    assert rows["mlp"][1:] == ["Bilinear", "resid:8", "->", "resid:8", f"{3 * 16 * 8}"]
    assert rows["op"][1] == "Opaque" and rows["op"][-1] == f"{8 * 8 + 8}"
    total = 10 * 8 + 8 + 3 * 16 * 8 + 8 * 8 + 8 + 3 * 8 + 3
    assert lines[-1] == f"{total} parameters in 7 boxes"


def test_info_json(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    code, out, _ = run(capsys, "info", str(model_dir), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["dom"] == ["tokens:10"] and summary["cod"] == ["logits:3"]
    assert [box["kind"] for box in summary["boxes"]] == ["Embed", "Copy", "Norm", "Bilinear", "Add", "Opaque", "Linear"]
    assert sum(box["params"] for box in summary["boxes"]) == summary["num_params"] == 571


def test_draw(capsys: pytest.CaptureFixture[str], model_dir: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "draw", str(model_dir), "-o", str(tmp_path / "m.png"))
    assert (code, err) == (0, "") and out == f"wrote {tmp_path / 'm.png'}\n"
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (model_dir / "opaque.pt").write_bytes(b"not even a pickle")        # drawing never reads the weights
    assert run(capsys, "draw", str(model_dir), "-o", str(tmp_path / "m.svg"), "--no-kinds")[0] == 0
    assert "Bilinear" not in (tmp_path / "m.svg").read_text() and "resid:8" in (tmp_path / "m.svg").read_text()


@pytest.mark.parametrize("argv, message", [
    (["info", "{tmp}/nowhere"], "no model at {tmp}/nowhere: the directory does not exist"),
    (["draw", "{model}", "-o", "{tmp}/m.pdf"], "cannot draw to {tmp}/m.pdf: the file name must end in .png or .svg"),
    (["info", "{model}/meta.json"], "{model}/meta.json is a file, not a model directory"),
])
def test_user_errors_exit_1_with_one_line(capsys: pytest.CaptureFixture[str], model_dir: Path, tmp_path: Path,
                                          argv: list[str], message: str) -> None:
    fill = {"tmp": tmp_path, "model": model_dir}
    code, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert (code, out) == (1, "")
    assert err.startswith(f"compinterp: error: {message.format(**fill)}") and err.count("\n") == 1
    assert "Traceback" not in err


def test_corrupted_weights_are_reported_by_info(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    weights = model_dir / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    code, _, err = run(capsys, "info", str(model_dir))
    assert code == 1 and "weights.safetensors: checksum mismatch" in err and err.count("\n") == 1


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="does not exist"):
        main(["--debug", "info", str(tmp_path / "nowhere")])
    with pytest.raises(FormatError, match="does not exist"):
        main(["info", str(tmp_path / "nowhere"), "--debug"])


def test_console_script_version_starts_without_torch() -> None:
    script = ROOT / ".venv" / "bin" / "compinterp"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"compinterp {compinterp.__version__}\n", "")
    probe = ("import sys; from compinterp.cli import main; main(['--help']); main(['info', '--help']); "
             "print(sorted(m for m in ('torch', 'discopy', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[-1] == "[]"
