"""The command line's ``refine`` (saves a loadable, faithful, shorter model; prints JSON) and the
description length in ``info``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compinterp.cli import main
from compinterp.complexity import description_length
from compinterp.faithfulness import check
from compinterp.files import save
from compinterp.model import Model, load
from compinterp.syntax import Bilinear, Elementwise, Linear, Space
from compinterp.tasks import digits

pytestmark = pytest.mark.usefixtures("one_thread")

PIXELS, DIGITS = Space("pixels", 64), Space("digits", 10)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A bilinear layer on the digits' pixels whose hidden units matter less and less."""
    model = Model(Bilinear("mlp", PIXELS, DIGITS, hidden=12), seed=0)
    p = {k: v.detach() for k, v in model.box_params("mlp").items()}
    p["D"] = p["D"] * 0.6 ** torch.arange(12.0)
    return save(Model(model.diagram, {"mlp": p}), tmp_path / "model")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_refine_json_saves_a_faithful_shorter_model(capsys: pytest.CaptureFixture[str], model_dir: Path,
                                                    tmp_path: Path) -> None:
    out_dir = tmp_path / "refined"
    code, out, err = run(capsys, "refine", str(model_dir), "--min-faithfulness", "0.99", "--out", str(out_dir),
                         "--passes", "eigen,prune", "--json")

    assert (code, err) == (0, "")
    result = json.loads(out)
    assert {"original_bits", "refined_bits", "faithfulness", "frontier", "out"} <= set(result)
    assert result["out"] == str(out_dir) and result["faithfulness"] >= 0.99
    assert all(set(p) == {"bits", "faithfulness", "passes"} for p in result["frontier"])
    original, refined = load(model_dir), load(out_dir)
    assert check(original, refined, "exact").end_to_end.faithfulness == pytest.approx(result["faithfulness"], abs=1e-9)
    assert description_length(refined).model == pytest.approx(result["refined_bits"])
    assert result["refined_bits"] < result["original_bits"] / 4


def test_refine_on_digits_with_a_plot(capsys: pytest.CaptureFixture[str], model_dir: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "refine", str(model_dir), "--out", str(tmp_path / "r"), "--data", "digits",
                         "--passes", "prune", "--budget", "30", "--plot", str(tmp_path / "f.svg"))
    assert code == 0 and out.startswith("refined: ") and f"wrote {tmp_path / 'r'} and {tmp_path / 'f.svg'}" in out
    assert "<svg" in (tmp_path / "f.svg").read_text()
    x, y = digits.load("test")
    report = check(load(model_dir), load(tmp_path / "r"), (x, y), progress=False)
    assert report.end_to_end.faithfulness >= 0.99


def test_info_prints_the_description_length(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    code, out, _ = run(capsys, "info", str(model_dir))
    bits = description_length(load(model_dir))
    assert code == 0 and "description length (numbers at 32 bits unless quantised)" in out
    assert f"  parameters  {bits.parameters:>14,.1f} bits" in out.splitlines()
    assert f"  total       {bits.total:>14,.1f} bits" in out.splitlines()
    assert out.splitlines()[-1] == f"{12 * 64 * 2 + 10 * 12:,} parameters in 1 boxes"
    code, out, _ = run(capsys, "info", str(model_dir), "--json")
    summary = json.loads(out)["description_length"]
    assert summary["total"] == pytest.approx(summary["structure"] + summary["parameters"])
    assert summary["parameters"] == pytest.approx(3 * 6 + 2 * 12 * 64 * 32 + 10 * 12 * 32)


@pytest.mark.parametrize("argv, message", [
    (["--passes", "frob"], "unknown pass 'frob'; the passes are "),
    (["--min-faithfulness", "2"], "min_faithfulness must be a number from 0 to 1, got 2.0"),
    (["--budget", "0"], "budget must be a positive integer, got 0"),
    (["--data", "nowhere.pt"], "no data file at nowhere.pt"),
])
def test_refine_errors_exit_1_with_one_line(capsys: pytest.CaptureFixture[str], model_dir: Path, tmp_path: Path,
                                            argv: list[str], message: str) -> None:
    code, out, err = run(capsys, "refine", str(model_dir), "--out", str(tmp_path / "r"), *argv)
    assert (code, out) == (1, "") and err.startswith(f"compinterp: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_refine_needs_data_for_a_model_that_is_not_polynomial(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    path = save(Model(Linear("up", PIXELS, PIXELS) >> Elementwise("relu", PIXELS), seed=0), tmp_path / "m")
    code, _, err = run(capsys, "refine", str(path), "--out", str(tmp_path / "r"), "--data", "exact")
    assert code == 1 and "no exact comparison with this model: box 'relu'" in err and "give data instead" in err
    assert "gaussian:N" in err and not (tmp_path / "r").exists()


def test_refine_usage(capsys: pytest.CaptureFixture[str], model_dir: Path) -> None:
    code, _, err = run(capsys, "refine", str(model_dir))
    assert code == 2 and "the following arguments are required: --out" in err
    code, out, _ = run(capsys, "refine", "--help")
    assert code == 0 and "example:\n  compinterp refine runs/digits --min-faithfulness 0.99" in out


def test_refine_passes_the_encoder_options_to_the_dictionary_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import compinterp.refinement.dictionary as dictionary
    made: dict[str, dict] = {}
    real = dictionary.make_pass

    def spy(name: str, *args: object, **kwargs: object) -> object:
        made[name] = kwargs
        return real(name, *args, **kwargs)

    monkeypatch.setattr(dictionary, "make_pass", spy)
    x, h = Space("x", 6), Space("h", 12)
    save(Model(Linear("up", x, h, bias=True) >> Elementwise("relu", h) >> Linear("down", h, x), seed=0), tmp_path / "m")
    code = main(["refine", str(tmp_path / "m"), "--out", str(tmp_path / "out"), "--data", "gaussian:512",
                 "--passes", "sae,bilinear_ae", "--kind", "jumprelu", "--l0", "0.5", "--widths", "8", "--steps", "5",
                 "--no-quantise", "--json"])
    assert code == 0, capsys.readouterr().err
    assert made["sae"]["kind"] == "jumprelu" and made["sae"]["l0"] == 0.5
    assert "kind" not in made["bilinear_ae"] and "l0" not in made["bilinear_ae"]
    assert main(["refine", str(tmp_path / "m"), "--out", str(tmp_path / "o2"), "--data", "gaussian:64",
                 "--passes", "sae", "--l0", "0.5"]) == 1
    assert "--l0 is the positive L0 coefficient of --kind jumprelu" in capsys.readouterr().err
