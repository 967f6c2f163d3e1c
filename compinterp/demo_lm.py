"""The language-model demo: a byte-level transformer with bilinear MLPs on Python's standard library, explained.

``compinterp demo lm --out runs/lm`` (or :func:`run`) trains the ``text`` task's transformer (or
reuses the one in ``out/model`` trained with the same settings), then

1. finds the previous-token and induction heads from their attention patterns on repeated random
   bytes, states the circuit as an interpretation (:func:`compinterp.lm.induction_hypothesis`) and
   checks it per box and end to end, beside a control with the wrong heads;
2. checks each bilinear MLP's eigen-truncation exactly (from the weights) and on held-out text,
   and shows what its top output directions write and its top eigenvectors read, as bytes;
3. trains a transcoder on one MLP and shows its features' top-activating text;
4. refines the whole model under a loss-recovered bar on training text and reports the refined
   model's bits, and its faithfulness, loss recovered and bits per byte on held-out text;

and writes ``out/report.html`` (:func:`compinterp.report.lm.lm_report`), ``out/results.json`` and the
figures beside them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import compinterp
from compinterp import lm
from compinterp.complexity import description_length
from compinterp.data import resolve_device
from compinterp.disk import write_atomically
from compinterp.drawing.heatmaps import draw_patterns
from compinterp.errors import FormatError
from compinterp.faithfulness import check
from compinterp.files import check_target
from compinterp.interventions import attention_patterns
from compinterp.model import Model, load
from compinterp.refinement.dictionary import Transcoder
from compinterp.refinement.passes import eigen
from compinterp.refinement.search import refine
from compinterp.report.lm import lm_report
from compinterp.tasks import text
from compinterp.tasks.task import Task
from compinterp.tasks.train import read_run, train

RESULTS = "results.json"
"""The demo's numbers, in its output directory."""

HELD_OUT_WINDOWS, SEARCH_WINDOWS, REPEATS = 16, 8, 16
"""Held-out windows every check runs on, training windows the refinement search scores on, and repeated
random sequences the induction heads are found and checked on."""

EIGEN = {"mode": "per_direction", "directions": 32, "k": 8}
"""The eigen-truncation of each MLP: its top ``directions`` output directions, ``k`` eigenvectors each."""

TRANSCODER = {"box": "mlp0", "width": 512, "k": 32, "steps": 600, "lr": 3e-3, "batch_size": 4, "seed": 0}
"""The transcoder: on ``box``, ``width`` features, ``k`` active, ``steps`` Adam steps on batches of
``batch_size`` training windows."""

REFINE = {"metric": "loss_recovered", "bar": 0.95, "budget": 12, "passes": ["prune", "lowrank"]}
"""The refinement search: its bar (``metric``, the loss recovered on the next bytes of the search windows, at
least ``bar``), budget and passes."""

SHOWN_FEATURES, SNIPPETS, PATTERN_LENGTH = 8, 5, 12
"""Transcoder features shown, top snippets each, and the repeated sequence drawn in the pattern figures."""


@dataclass(frozen=True)
class DemoResult:
    """Where the report is, and the numbers in ``results.json``."""

    out: Path
    report: Path
    numbers: dict[str, Any]

    def __str__(self) -> str:
        n = self.numbers
        i, r = n["induction"], n["refinement"]
        return (f"text model ({n['model']['parameters']:,} parameters{', reused' if n['model']['reused'] else ''}): "
                f"{n['model']['bits_per_byte']:.3f} bits per byte held out, induction score "
                f"{n['model']['induction']['score']:.3f}\n"
                f"induction circuit {i['previous_head']} -> {i['induction_head']}: faithfulness "
                f"{i['explanation']['end_to_end']['faithfulness']:.3f}, control "
                f"{i['control']['end_to_end']['faithfulness']:.3f}\n"
                f"refined: {r['original_bits']:,.0f} -> {r['refined_bits']:,.0f} bits, held out: loss recovered "
                f"{r['held_out']['loss_recovered']:.3f}, faithfulness {r['held_out']['faithfulness']:.3f}, "
                f"{r['held_out']['bits_per_byte']:.3f} bits per byte\n"
                f"done in {n['seconds']['total']:.0f} s; report: {self.report}")


def run(out: str | Path = "runs/lm", *, device: str | torch.device = "cpu", seed: int = 0, retrain: bool = False,
        progress: bool = True, task: Task | None = None, trust_code: bool = False) -> DemoResult:
    """Run the LM demo into directory ``out`` (a model in ``out/model`` trained with the same seed,
    task and recipe is reused unless ``retrain``); returns where the report is and the numbers.
    ``task`` replaces the default :func:`compinterp.tasks.text.task` (smaller settings, for tests);
    ``trust_code`` lets a reused model's ``opaque.pt`` be unpickled (see :func:`compinterp.load`)."""
    start = time.perf_counter()
    out = Path(out)
    device = resolve_device(device)
    if out.exists() and not out.is_dir():
        raise FormatError(f"cannot write the LM demo to {out}: it is a file")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    task = task or text.task()
    context = task.options["context"]
    held_out = tuple(t[:HELD_OUT_WINDOWS].to(device) for t in task.data("test"))
    search = tuple(t[:SEARCH_WINDOWS].to(device) for t in task.data("train"))

    model, numbers = _model(out, task, seed, device, retrain, progress, trust_code=trust_code)
    clock = {"train": time.perf_counter() - start}
    mark = time.perf_counter()
    numbers["induction"] = _induction(out, model, progress)
    clock["induction"] = time.perf_counter() - mark
    mark = time.perf_counter()
    numbers["mlps"] = [_mlp(model, box, held_out) for box in lm.mlp_boxes(model)]
    clock["mlps"] = time.perf_counter() - mark
    mark = time.perf_counter()
    numbers["transcoder"] = _transcoder(model, task, held_out, context, device, progress)
    clock["transcoder"] = time.perf_counter() - mark
    mark = time.perf_counter()
    numbers["refinement"] = _refine(out, model, search, held_out, device, progress)
    clock["refine"] = time.perf_counter() - mark
    numbers["seconds"] = clock | {"total": time.perf_counter() - start}
    write_atomically(out / RESULTS, lambda partial: partial.write_text(json.dumps(numbers, indent=1) + "\n"))
    return DemoResult(out, lm_report(out), numbers)


def _model(out: Path, task: Any, seed: int, device: torch.device, retrain: bool, progress: bool, *,
           trust_code: bool = False) -> tuple[Model, dict[str, Any]]:
    """The text model (reused from ``out/model`` when its ``train.json`` matches), drawn; the numbers so far."""
    run_file = read_run(out / "model") if (out / "model").is_dir() and not retrain else None
    wanted = {"task": "text", "model": task.default_model, "seed": seed, "recipe": task.recipe().to_json(),
              "options": json.loads(json.dumps(dict(task.options)))}
    reused = run_file is not None and all(run_file.get(key) == value for key, value in wanted.items())
    if reused:
        model, trained = load(out / "model", trust_code=trust_code).to(device), run_file
    else:
        check_target(out / "model")
        result = train(task, seed=seed, device=device, progress=progress)
        result.save(out / "model")
        model, trained = result.model, result.to_json()
    model.eval()
    model.draw(out / "figures" / "model.svg")
    keys = ("seed", "epochs", "steps", "seconds", "bits_per_byte", "induction", "test_loss", "options")
    return model, {"compinterp_version": compinterp.__version__, "device": str(device),
                   "model": {"path": "model", "reused": reused, "parameters": model.num_params(),
                             "bits": description_length(model).to_json(), **{k: trained[k] for k in keys}}}


def _induction(out: Path, model: Model, progress: bool) -> dict[str, Any]:
    """The induction circuit and its control, checked; each attention box's patterns drawn on one repeated sequence."""
    result = lm.explain_induction(model, n=REPEATS, alone=True, progress=progress)
    tokens, positions, _ = text.repeated(1, PATTERN_LENGTH, seed=0)
    labels = [lm.byte_label(b) for b in tokens[0].tolist()]
    device = next(model.parameters()).device
    figures = {}
    for box in result.scores:
        patterns = attention_patterns(model, tokens.to(device), positions.to(device), box=box)[0].cpu()
        figures[box] = f"figures/patterns_{box}.png"
        draw_patterns(patterns, labels, out / figures[box], title=f"{box} on random bytes repeated twice")
    return result.to_json() | {"pattern_figures": figures, "length": model.dom.dims[1] // 2}


def _mlp(model: Model, box: str, held_out: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """MLP ``box``: its eigen-truncation checked exactly (the box alone, from the weights) and on held-out
    text (the whole model), and what its top directions write and eigenvectors read."""
    truncated = eigen(model, box, **EIGEN)
    layer = f"{box}_eig"
    exact = check(lm.alone(model, box), lm.alone(truncated, layer), "exact").end_to_end
    report = check(model, truncated, held_out, progress=False).end_to_end
    return {"box": box, "hidden": model.boxes[box].data["hidden"], "eigen": EIGEN,
            "eigen_hidden": truncated.boxes[layer].data["hidden"], "exact_faithfulness": exact.faithfulness,
            "held_out": _held(report, truncated, held_out),
            "views": lm.eigen_views(truncated, layer, EIGEN["k"], norm=f"ln_{box}")}


def _transcoder(model: Model, task: Any, held_out: tuple[torch.Tensor, ...], context: int, device: torch.device,
                progress: bool) -> dict[str, Any]:
    """A TopK transcoder on one MLP, trained on training text, checked on held-out text; its most often active
    features with their top-activating held-out snippets."""
    s = TRANSCODER
    train_windows = tuple(t[:s["steps"] * s["batch_size"] // 4] for t in task.data("train"))[:2]
    coder = Transcoder(train_windows, [s["box"]], widths=[s["width"]], ks=[s["k"]], steps=s["steps"], lr=s["lr"],
                       batch_size=s["batch_size"], seed=s["seed"], device=device, progress=progress)
    rewrite = coder.candidates(model)[0]
    dictionary = coder.fit(model, rewrite)
    interp = coder.interpret(model, rewrite, dictionary)
    report = check(model, interp, held_out, progress=False)
    tokens, positions = held_out[0], held_out[1]
    with torch.no_grad():
        inputs = model.run_with_cache(tokens, positions, names=[f"ln_{s['box']}"])[f"ln_{s['box']}"]
        codes = dictionary.encode(inputs).cpu()                                 # windows, T, features
    active = (codes > 0).flatten(0, 1).sum(0)
    shown = active.argsort(descending=True)[:SHOWN_FEATURES].tolist()
    return {**s, "trained_on": f"{len(train_windows[0])} training windows", "checked_on": "held-out windows",
            "local": report.box(s["box"]).metrics.faithfulness, "end_to_end": report.end_to_end.faithfulness,
            "loss_recovered": report.end_to_end.loss_recovered,
            "features": [{"index": f, "active": int(active[f]), "snippets": _snippets(codes[..., f], tokens.cpu())}
                         for f in shown]}


def _snippets(values: torch.Tensor, tokens: torch.Tensor, *, before: int = 24, after: int = 4) -> list[dict[str, Any]]:
    """The :data:`SNIPPETS` positions where a feature is largest: the text around each, the byte marked."""
    flat = values.flatten()
    out = []
    for index in flat.argsort(descending=True)[:SNIPPETS].tolist():
        w, t = divmod(index, values.shape[1])
        row = tokens[w].tolist()
        out.append({"value": flat[index].item(), "before": _text(row[max(0, t - before):t]),
                    "byte": _text(row[t:t + 1]), "after": _text(row[t + 1:t + 1 + after])})
    return out


def _text(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


def _refine(out: Path, model: Model, search: tuple[torch.Tensor, ...], held_out: tuple[torch.Tensor, ...],
            device: torch.device, progress: bool) -> dict[str, Any]:
    """The shortest model above the bar on the search windows, checked on held-out windows; frontier drawn."""
    result = refine(model, REFINE["bar"], search, passes=REFINE["passes"], budget=REFINE["budget"],
                    progress=progress, device=device, test_data=held_out, metric=REFINE["metric"])
    result.model.save(out / "refined")
    result.frontier.plot(out / "figures" / "frontier.png", title="LM refinement: bits against loss recovered")
    report = result.held_out.end_to_end
    return result.to_json() | {"search_on": f"{len(search[0])} training windows", **REFINE,
                               "held_out": _held(report, result.model, held_out),
                               "frontier_figure": "figures/frontier.png"}


def _held(report: Any, refined: Model, held_out: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Faithfulness, loss recovered and bits per byte of ``refined`` on the held-out windows."""
    return {"faithfulness": report.faithfulness, "loss_recovered": report.loss_recovered,
            "bits_per_byte": text.bits_per_byte(refined, held_out).mean().item()}
