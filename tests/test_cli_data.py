"""Data that fits the model's input wires, default data, held-out scoring in refine, and the command
line's fixes (``--logits``, label accuracy, devices, outputs checked first, a closed pipe), each against
an independent computation or the exact one-line message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compinterp import data as cidata
from compinterp.cli import DEFAULT_PASSES, SIGPIPE_STATUS, main
from compinterp.data import Input, Tensors, fit, gaussian
from compinterp.errors import InputError
from compinterp.faithfulness import check, default_data
from compinterp.files import save
from compinterp.model import Model, load
from compinterp.models import transformer
from compinterp.refinement.passes import default_passes
from compinterp.refinement.search import refine
from compinterp.report.html import number, table
from compinterp.semantics import inputs
from compinterp.syntax import Add, Bilinear, Conv, Elementwise, Embed, Linear, Norm, Space, Unembed, chain
from compinterp.tasks import data_from_spec
from support import assert_error

pytestmark = pytest.mark.usefixtures("one_thread")

P = 7
X, Y = Space("x", 6), Space("y", 5)


def token_model(seed: int, norm: bool = True) -> Model:
    """Modular-addition shaped: two token wires a, b into logits; a Norm makes it not polynomial."""
    r = Space("resid", 8)
    middle = [Norm("ln", r)] if norm else []
    diagram = chain(Embed("embed_a", Space("a", P), r) @ Embed("embed_b", Space("b", P), r), Add(r), *middle,
                    Bilinear("mlp", r, r, hidden=8), Unembed("unembed", r, Space("logits", P)))
    return Model(diagram, seed=seed)


def attention_model(seed: int) -> Model:
    """A small transformer on tokens:11 @ positions:6."""
    return Model(transformer(11, 6, Space("logits", 11), width=16, heads=2, layers=1, hidden=16), seed=seed)


def vector_model(seed: int, out: Space = Y) -> Model:
    """Not polynomial, on vectors x:6, its output not named logits."""
    return Model(Linear("up", X, X, bias=True) >> Elementwise("relu", X) >> Linear("down", X, out), seed=seed)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def hand(model: Model, other: Model, xs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """FVU (squared errors over the variance about the mean, summed over the output dimensions) and top-1
    agreement of ``other`` against ``model`` on ``xs``, computed directly."""
    with torch.no_grad():
        a, b = model(*xs).double(), other(*xs).double()
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    fvu = (a - b).square().sum() / (a - a.mean(0)).square().sum()
    return fvu.item(), (a.argmax(-1) == b.argmax(-1)).double().mean().item()


def whole(source: cidata.Source, model: Model) -> tuple[torch.Tensor, ...]:
    """Every sample of ``source`` as the model's wires take them, in one batch."""
    return next(source.batches(10 ** 9, inputs(model.plan)))


def test_input_wires_say_what_they_take() -> None:
    tokens = inputs(token_model(0).plan)
    assert [(w.name, w.kind, w.seq, w.box) for w in tokens] == [
        ("a:7", "tokens", None, "Embed box 'embed_a'"), ("b:7", "tokens", None, "Embed box 'embed_b'")]
    sequence = inputs(attention_model(0).plan)
    assert [(w.kind, w.seq) for w in sequence] == [("tokens", 6), ("positions", 6)]
    assert sequence[0].sequence == "Attention box 'attn0'"
    assert [(w.kind, w.seq) for w in inputs(vector_model(0).plan)] == [("vectors", None)]


def test_generated_data_gives_token_ids_and_sequences() -> None:
    a, b = whole(gaussian(500, seed=3), token_model(0))
    assert a.dtype == b.dtype == torch.long and a.shape == b.shape == (500,)
    assert a.min() >= 0 and a.max() == P - 1 and len(set(a.tolist())) == P
    tokens, positions = whole(gaussian(40), attention_model(0))
    assert tokens.shape == positions.shape == (40, 6) and tokens.dtype == torch.long and tokens.max() < 11
    assert torch.equal(positions, torch.arange(6).expand(40, 6))


def test_default_token_check_is_on_token_ids(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The old default read Gaussian floats as soft one-hot rows; now the ids are uniform tokens."""
    one, two = token_model(0), token_model(1)
    a, b = save(one, tmp_path / "a"), save(two, tmp_path / "b")
    report = run_json(capsys, "check", str(a), str(b))
    assert report["samples"] == 10_000 and report["data"].startswith("data generated with seed 0")
    fvu, top1 = hand(one, two, whole(gaussian(10_000), one))
    assert report["end_to_end"]["fvu"] == pytest.approx(fvu, rel=1e-6)
    assert report["end_to_end"]["top1"] == pytest.approx(top1, abs=1e-12)
    code, out, _ = run(capsys, "check", str(a), str(b))
    assert code == 0 and "faithfulness below 0 (FVU above 1)" in out
    assert_error(InputError, lambda: check(one, two, (torch.randn(10, P), torch.randn(10, P)), progress=False),
                 "batch 0: wire a:7 takes token ids (it feeds Embed box 'embed_a'): give integers in [0, 7), "
                 "not float32 numbers")
    assert_error(InputError, lambda: check(one, two, (torch.arange(10), torch.zeros(10, dtype=torch.long)),
                                           progress=False),
                 "batch 0: wire a:7 takes token ids in [0, 7), but the data holds ids from 0 to 9")


def test_polynomial_models_default_to_exact(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    one, two = token_model(0, norm=False), token_model(1, norm=False)
    a, b = save(one, tmp_path / "a"), save(two, tmp_path / "b")
    assert default_data(one) == default_data(one, two) == "exact"
    report = run_json(capsys, "check", str(a), str(b))
    assert report["exact"] and report == run_json(capsys, "check", str(a), str(b), "--data", "exact")
    refined = run_json(capsys, "refine", str(a), "--out", str(tmp_path / "r"), "--budget", "3")
    assert refined["exact"] and refined["search_data"] == "exact" and refined["held_out"] is None
    assert refined["held_out_note"].startswith("exact: the faithfulness is the population value")


@pytest.mark.parametrize("batch_size", [7, 32, 256])
def test_attention_check_does_not_depend_on_the_batch_size(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                          batch_size: int) -> None:
    one, two = attention_model(0), attention_model(1)
    a, b = save(one, tmp_path / "a"), save(two, tmp_path / "b")
    report = run_json(capsys, "check", str(a), str(b), "--batch-size", str(batch_size))
    sequences = -(-10_000 // 6)
    assert report["samples"] == sequences and report["end_to_end"]["n"] == 6 * sequences
    fvu, top1 = hand(one, two, whole(gaussian(sequences), one))
    assert report["end_to_end"]["fvu"] == pytest.approx(fvu, abs=1e-6)
    assert report["end_to_end"]["top1"] == pytest.approx(top1, abs=1e-12)


def test_data_that_does_not_fit_is_refused_naming_the_wire(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    seq = attention_model(0)
    ids = torch.zeros(4, dtype=torch.long)
    assert_error(InputError, lambda: check(seq, attention_model(1), (ids, ids), progress=False),
                 "batch 0: wire tokens:11 takes (samples, positions) (the model reads sequences: Attention box "
                 "'attn0'), but the data has shape (4,)")
    assert_error(InputError, lambda: fit((torch.randn(4, 5),), [Input("x:6", 6)], 2),
                 "batch 2: wire x:6 takes (samples, 6), but the data has shape (4, 5): its last axis must be 6")
    assert_error(InputError, lambda: fit((torch.ones(4, 6, dtype=torch.long),), [Input("x:6", 6)], 0),
                 "batch 0: wire x:6 takes real vectors, not int64 numbers")
    pixels = Space("pixels", 64)
    path = save(Model(Linear("up", pixels, pixels) >> Elementwise("relu", pixels), seed=0), tmp_path / "m")
    torch.save(torch.randn(64), tmp_path / "flat.pt")
    code, out, err = run(capsys, "check", str(path), str(path), "--data", str(tmp_path / "flat.pt"), "--json")
    assert code == 1 and out == "" and err == (
        "compinterp: error: batch 0: wire pixels:64 takes (samples, 64), but the data has shape (64,) (one sample: "
        "add its axis with x.unsqueeze(0))\n")


def test_a_model_on_images_has_no_default_data() -> None:
    w = Space("w", 8)
    model = Model(Conv("conv", w, w, in_channels=3, out_channels=2, kernel=3, padding=1), seed=0)
    assert inputs(model.plan)[0].kind == "images"
    assert_error(InputError, lambda: default_data(model),
                 "no default data for a model on images (wire w:8, Conv box 'conv'): give data of shape "
                 "(samples, channels, height, 8)")
    assert_error(InputError, lambda: check(model, model, gaussian(4), progress=False),
                 "wire w:8 takes images (the model has Conv box 'conv'): generated data cannot guess")


def test_splits_are_disjoint_and_whole() -> None:
    g = gaussian(10, seed=5)
    search, test = g.split(0.3)
    assert (search.n, test.n) == (7, 3)
    parts = torch.cat([whole(search, vector_model(0))[0], whole(test, vector_model(0))[0]])
    assert torch.equal(parts, whole(g, vector_model(0))[0])
    x = torch.arange(20.0).reshape(10, 2)
    left, right = Tensors(x).split(0.5)
    assert sorted(torch.cat([left.data[0], right.data[0]])[:, 0].tolist()) == x[:, 0].tolist()
    assert_error(InputError, lambda: Tensors(x[:1]).split(0.5), "holding out 0.5 of 1 sample(s) leaves no sample")
    assert_error(InputError, lambda: Tensors(x).split(1.0), "the held-out fraction must lie strictly between 0 and 1")


@pytest.fixture
def vector_data(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A non-polynomial model, search data and separate held-out data as files."""
    path = save(vector_model(0), tmp_path / "m")
    g = torch.Generator().manual_seed(1)
    torch.save(torch.randn(300, 6, generator=g), tmp_path / "x.pt")
    torch.save(torch.randn(120, 6, generator=g), tmp_path / "t.pt")
    return path, tmp_path / "x.pt", tmp_path / "t.pt"


def test_refine_scores_the_held_out_half_apart(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               vector_data: tuple[Path, Path, Path]) -> None:
    path, x, _ = vector_data
    result = run_json(capsys, "refine", str(path), "--out", str(tmp_path / "r"), "--data", str(x),
                      "--min-faithfulness", "0.9", "--budget", "30")
    model, refined = load(path), load(tmp_path / "r")
    search, test = cidata.from_file(x).split(0.5)
    assert result["held_out"]["samples"] == test.n == 150 and result["search_data"] == f"150 samples of {x}"
    assert result["held_out_note"] == "150 of the 300 samples held out (a fixed random order); the search ran on " \
                                      "the other 150"
    assert result["held_out_faithfulness"] == pytest.approx(
        check(model, refined, test, progress=False).end_to_end.faithfulness, abs=1e-12)
    assert result["held_out_faithfulness"] == pytest.approx(1 - hand(model, refined, test.data)[0], abs=1e-6)
    assert result["faithfulness"] == pytest.approx(1 - hand(model, refined, search.data)[0], abs=1e-6)
    assert result["history"] and result["held_out_faithfulness"] != result["faithfulness"]
    code, out, _ = run(capsys, "refine", str(path), "--out", str(tmp_path / "r"), "--data", str(x),
                       "--min-faithfulness", "0.9", "--budget", "30")
    assert code == 0 and "held out: faithfulness " in out and "on 150 samples the search did not see" in out


def test_refine_on_generated_data_holds_out_disjoint_samples(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: Path) -> None:
    model = vector_model(0)
    path = save(model, tmp_path / "m")
    result = run_json(capsys, "refine", str(path), "--out", str(tmp_path / "r"), "--budget", "4",
                      "--passes", "lowrank")
    _, test = gaussian(10_000).split(0.5)
    assert result["search_data"] == "5,000 samples of data generated with seed 0 (Gaussian vectors, uniform token ids)"
    assert result["held_out"]["data"] == "data generated with seed 0 from sample 5,000 on (Gaussian vectors, " \
                                         "uniform token ids)"
    assert result["held_out_faithfulness"] == pytest.approx(
        check(model, load(tmp_path / "r"), test, progress=False).end_to_end.faithfulness, abs=1e-12)


def test_refine_takes_explicit_held_out_data(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             vector_data: tuple[Path, Path, Path]) -> None:
    path, x, t = vector_data
    result = run_json(capsys, "refine", str(path), "--out", str(tmp_path / "r"), "--search-data", str(x),
                      "--test-data", str(t), "--min-faithfulness", "0.9", "--budget", "20")
    held = check(load(path), load(tmp_path / "r"), str(t), progress=False)
    assert result["held_out"]["samples"] == 120 and result["search_data"] == f"300 samples of {x}"
    assert result["held_out_faithfulness"] == pytest.approx(held.end_to_end.faithfulness, abs=1e-12)
    none = run_json(capsys, "refine", str(path), "--out", str(tmp_path / "r"), "--data", str(x), "--holdout", "0",
                    "--budget", "5")
    assert none["held_out"] is None and none["held_out_note"].startswith("not held out")
    code, _, err = run(capsys, "refine", str(path), "--out", str(tmp_path / "r"), "--holdout", "0.2",
                       "--test-data", str(t))
    assert code == 1 and err == "compinterp: error: give --holdout or --test-data, not both\n"


def test_refine_api_reports_held_out_data(vector_data: tuple[Path, Path, Path]) -> None:
    path, x, t = vector_data
    model, xs, ts = load(path), torch.load(x), torch.load(t)
    result = refine(model, 0.9, xs, passes=["lowrank"], budget=10, progress=False, test_data=ts)
    assert result.held_out == check(model, result.model, ts, progress=False)
    assert result.to_json()["held_out_faithfulness"] == result.held_out_faithfulness
    half = refine(model, 0.9, xs, passes=["lowrank"], budget=10, progress=False, holdout=0.25)
    search, test = Tensors(xs).split(0.25)
    assert half.held_out.samples == test.n == 75
    assert half.held_out_faithfulness == pytest.approx(1 - hand(model, half.model, test.data)[0], abs=1e-6)
    assert half.faithfulness == pytest.approx(1 - hand(model, half.model, search.data)[0], abs=1e-6)
    plain = refine(model, 0.9, xs, passes=["lowrank"], budget=10, progress=False)
    assert plain.held_out is None and plain.held_out_note.startswith("not held out")


def test_logits_names_the_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    one, two = vector_model(0), vector_model(1)
    a, b = save(one, tmp_path / "a"), save(two, tmp_path / "b")
    plain = run_json(capsys, "check", str(a), str(b))
    assert plain["end_to_end"]["kl"] is None and plain["end_to_end"]["top1"] is None
    assert plain["note"] == ("no logit metrics: the output y:5 is not labelled logits nor made by an Unembed box; if "
                             "it holds logits, name it with --logits y (logits='y')")
    named = run_json(capsys, "check", str(a), str(b), "--logits", "y")
    _, top1 = hand(one, two, whole(gaussian(10_000), one))
    assert named["note"] is None and named["end_to_end"]["kl"] > 0
    assert named["end_to_end"]["top1"] == pytest.approx(top1, abs=1e-12)
    assert named["end_to_end"]["fvu"] == plain["end_to_end"]["fvu"]
    code, _, err = run(capsys, "check", str(a), str(b), "--logits", "z")
    assert code == 1 and err == ("compinterp: error: no output wire 'z' to read logits from; the model's outputs "
                                 "are y:5\n")


def test_labels_give_accuracy(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    one, two = vector_model(0, Space("logits", 5)), vector_model(1, Space("logits", 5))
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(5, (200,), generator=torch.Generator().manual_seed(3))
    report = check(one, two, (x, labels), batch_size=64, progress=False).end_to_end
    with torch.no_grad():
        assert report.accuracy_model == (one(x).argmax(-1) == labels).double().mean().item()
        assert report.accuracy_explanation == (two(x).argmax(-1) == labels).double().mean().item()
    torch.save((x, labels), tmp_path / "xy.pt")
    a, b = save(one, tmp_path / "a"), save(two, tmp_path / "b")
    code, out, _ = run(capsys, "check", str(a), str(b), "--data", str(tmp_path / "xy.pt"))
    assert code == 0 and (f"  accuracy on the labels: model {report.accuracy_model:.4f}, explanation "
                          f"{report.accuracy_explanation:.4f}") in out.splitlines()
    unscored = check(vector_model(0), vector_model(1), (x, labels), progress=False)
    assert unscored.note.startswith("labels were given but not scored: the output y:5 is not labelled logits")


def test_modular_data_fits_both_model_shapes() -> None:
    pairs = data_from_spec("modular", inputs(token_model(0).plan))
    a, b, y = pairs.data
    assert pairs.describe() == "the held-out pairs of modular addition" and bool(((a + b) % P == y).all())
    seq = data_from_spec("modular", inputs(Model(transformer(P + 1, 3, Space("logits", P), width=8, heads=2,
                                                             layers=1, hidden=8)).plan))
    assert [tuple(t.shape[1:]) for t in seq.data] == [(3,), (3,), (3,)]
    assert_error(InputError, lambda: data_from_spec("modular", inputs(vector_model(0).plan)),
                 "the modular data is two token wires a @ b (or tokens @ positions), but the model takes x:6")


def test_exact_on_a_model_that_is_not_polynomial_says_what_to_pass(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    a = save(vector_model(0), tmp_path / "a")
    code, _, err = run(capsys, "check", str(a), str(a), "--data", "exact")
    assert code == 1 and err == (
        "compinterp: error: no exact check: box 'relu' (Elementwise x:6 -> x:6) is not polynomial: relu is not a "
        "polynomial (only identity, neg and square are); give data instead: gaussian:N (generated to fit the "
        "model's input wires), digits or modular "
        "(a task's held-out data), or FILE.pt\n")


def test_refine_help_lists_the_default_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert DEFAULT_PASSES == tuple(p.name for p in default_passes())
    code, out, _ = run(capsys, "refine", "--help")
    assert code == 0 and "fuse,eigen,lowrank,prune,odt,cp" in " ".join(out.split())
    assert "--holdout F" in out and "--test-data SPEC" in out and "--search-data" in out


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda"])
@pytest.mark.parametrize("command", ["check", "refine", "demo", "train"])
def test_devices_are_refused_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str,
                                         device: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("cuda is a working device here")
    a = str(save(vector_model(0), tmp_path / "a"))
    argv = {"check": ["check", a, a], "refine": ["refine", a, "--out", str(tmp_path / "o")],
            "demo": ["demo", "--out", str(tmp_path / "o")], "train": ["train", "gates", "--out", str(tmp_path / "o")]}
    code, _, err = run(capsys, *argv[command], "--device", device)
    expected = {"bogus": "device 'bogus' is not a torch device here (use e.g. cpu, cuda, cuda:1, mps)",
                "meta": "device meta holds shapes but no values: nothing can run there (use e.g. cpu, cuda)",
                "cuda": "device cuda is not available here: "}[device]
    assert code == 1 and err.startswith(f"compinterp: error: {expected}") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_refine_checks_its_outputs_before_the_search(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_search(*args: object, **kwargs: object) -> None:
        raise AssertionError("the search ran before the outputs were checked")

    monkeypatch.setattr("compinterp.refinement.search.refine", no_search)
    a = str(save(vector_model(0), tmp_path / "a"))
    code, _, err = run(capsys, "refine", a, "--out", str(tmp_path / "r"), "--plot", str(tmp_path / "x.txt"))
    assert code == 1 and err == (f"compinterp: error: cannot plot the frontier to {tmp_path / 'x.txt'}: the file name "
                                 "must end in .png or .svg, not '.txt'\n")
    (tmp_path / "file").write_text("")
    code, _, err = run(capsys, "refine", a, "--out", str(tmp_path / "file" / "r"))
    assert code == 1 and err.startswith(f"compinterp: error: cannot save a model to {tmp_path / 'file' / 'r'}: ")
    code, _, err = run(capsys, "refine", a, "--out", str(tmp_path / "file"))
    assert code == 1 and "it is a file, not a directory" in err
    assert not (tmp_path / "r").exists()


def test_a_closed_pipe_ends_quietly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    a = str(save(vector_model(0), tmp_path / "a"))
    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["info", a]) == SIGPIPE_STATUS
    monkeypatch.undo()
    assert capsys.readouterr().err == ""
    command = [sys.executable, "-c", "import sys; from compinterp.cli import main; sys.exit(main())", "info", a]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    assert child.wait(timeout=120) == SIGPIPE_STATUS and child.stderr.read() == b""
    script = Path(sys.executable).with_name("compinterp")
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {script} info {a} | head -1"],
                           capture_output=True, text=True, timeout=120)
    assert piped.stdout == f"model   {a}\n" and piped.stderr == "" and piped.returncode in (0, SIGPIPE_STATUS)


def test_report_tables_write_numbers_as_the_text_does() -> None:
    assert [number(v) for v in (19980.2, 0.980501, 1e-9, 12, 0.0)] == ["19,980", "0.9805", "1.00e-09", "12", "0.0000"]
    assert '<td class="num">19,980</td><td class="num">0.9805</td>' in table(["bits", "f"], [[19980.2, 0.980501]])


def test_ignored_labels_score_nothing() -> None:
    one, two = attention_model(0), attention_model(1)
    tokens, positions = whole(gaussian(50, seed=4), one)
    labels = torch.full((50, 6), -100)
    labels[:, -1] = torch.randint(11, (50,), generator=torch.Generator().manual_seed(5))
    report = check(one, two, (tokens, positions, labels), batch_size=16, progress=False).end_to_end
    with torch.no_grad():
        last_m, last_e = one(tokens, positions)[:, -1], two(tokens, positions)[:, -1]
    assert report.accuracy_model == (last_m.argmax(-1) == labels[:, -1]).double().mean().item()
    assert report.accuracy_explanation == (last_e.argmax(-1) == labels[:, -1]).double().mean().item()
    ce = torch.nn.functional.cross_entropy(last_m.double(), labels[:, -1]).item()
    assert report.ce_model == pytest.approx(ce, rel=1e-6)
    labels[0, 0] = -3
    assert_error(InputError, lambda: check(one, two, (tokens, positions, labels), progress=False),
                 "batch 0: labels must lie in [0, 11), got values from -3 to 10 (-100 marks a position without "
                 "a label)")


def test_exact_says_it_has_no_logit_metrics() -> None:
    one, two = token_model(0, norm=False), token_model(1, norm=False)
    assert check(one, two, "exact").note.startswith("uniform tokens; nothing approximated")
    noted = check(one, two, "exact", logits="logits").note
    assert noted.endswith("; no logit metrics: the exact path compares the outputs as functions of the input, give "
                          "data for KL, top-1 agreement and accuracy")


def test_a_wire_too_wide_to_generate_or_compare_is_refused_before_allocating(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    wide = Space("x", 2 ** 31 - 1)
    with pytest.raises(InputError, match=r"x: 2,147,483,647\).*over the 134,217,728"):
        next(gaussian(4).batches(2, [Input("x", wide.dim)]))
    save(Model(Elementwise("relu", wide, name="r")), tmp_path / "wide")
    code, _, err = run(capsys, "check", str(tmp_path / "wide"), str(tmp_path / "wide"))
    assert code == 1 and "too wide to compare" in err and len(err.splitlines()) == 1
