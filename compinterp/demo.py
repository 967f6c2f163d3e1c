"""The demo: the whole framework on a real model trained on real data, in one command.

``compinterp demo --out runs/demo`` (or :func:`run`) trains a bilinear classifier on
sklearn's digits (or reuses the one already in ``out/model``), draws its diagram,
declares an eigen-explanation (each digit's logit is a sum of squares of a few
eigenvectors, ``logit_c(x) ~ sum_m lambda_cm (v_cm . x)^2``) and checks it for
faithfulness on the held-out digits and exactly, runs the refinement search for the
shortest model that keeps a faithfulness bar, trains a TopK sparse autoencoder on the
wire ``out`` and describes its top features, and writes ``out/report.html`` with the
models, ``results.json`` and the figures beside it.

The explanation of the classifier ``pixels -> mlp (Bilinear) -> out -> unembed -> logits``:

* the wire ``out`` is read through the unembedding, ``sigma_out = U`` (so it carries logits);
* the box ``mlp`` goes to a symmetric bilinear box whose hidden units are the top ``k``
  eigenvectors of each digit's quadratic form ``Q_c = sym(einsum("c h, h i, h j -> c i j",
  U D, L, R))``, with ``D`` holding the eigenvalues;
* the box ``unembed`` goes to the identity, since ``out`` already stands for the logits.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.models import bilinear_mlp
>>> from compinterp.syntax import Space
>>> model = Model(bilinear_mlp(Space("x", 6), Space("logits", 3), width=5, hidden=4, embed=False),
...               seed=0, dtype=torch.float64)
>>> values, vectors = class_spectrum(model)
>>> tuple(values.shape), tuple(vectors.shape)
((3, 6), (3, 6, 6))
>>> full = eigen_interpretation(model, k=6)
>>> x = torch.randn(4, 6, dtype=torch.float64)
>>> torch.allclose(full.explanation(x), model(x))
True
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import compinterp
from compinterp.complexity import description_length
from compinterp.data import resolve_device
from compinterp.disk import write_atomically
from compinterp.drawing import save_figure
from compinterp.drawing.images import eigenvector_figure
from compinterp.errors import BoxError, FormatError, InputError
from compinterp.faithfulness import check
from compinterp.faithfulness.exact import exact_compare, fit_gaussian
from compinterp.files import check_target
from compinterp.interpretation import Interpretation, maps
from compinterp.model import Model, load
from compinterp.refinement.dictionary import SAE, features, score
from compinterp.refinement.search import refine
from compinterp.report import demo_report
from compinterp.report.figures import bits_figure, feature_figure, sweep_figure
from compinterp.syntax import Bilinear, Id, Linear, Unembed
from compinterp.tasks import digits
from compinterp.tasks.train import evaluate, read_run, train

DEFAULT_OUT = Path("runs/demo")
"""Where ``compinterp demo`` writes when no ``--out`` is given."""

RESULTS = "results.json"
"""The demo's numbers, in its output directory."""

SWEEP = (1, 2, 4, 8, 16)
"""The eigenvectors per class the demo's sweep tries."""

SAE_SETTINGS = {"box": "mlp", "width": 32, "k": 4, "steps": 600, "lr": 3e-3, "seed": 0}
"""The demo's sparse autoencoder: on the output wire of ``box``, ``width`` features, ``k`` active (TopK),
trained for ``steps`` Adam steps on the training digits."""

SHOWN_FEATURES, TOP_DIGITS = 6, 6
"""How many features the report shows, and how many top-activating held-out digits for each."""


def class_spectrum(model: Model, box: str = "mlp", readout: str = "unembed") -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's quadratic form read off a bias-free bilinear ``box`` and its ``readout`` map ``U``:
    ``Q_c = sym(einsum("c h, h i, h j -> c i j", U D, L, R))``, so ``logit_c(x) = x^T Q_c x``.

    Returns the eigenvalues ``(classes, inputs)`` sorted by ``|lambda|``, largest first, and the
    matching unit eigenvectors ``(classes, inputs, inputs)`` (``vectors[c, m]`` is the m-th), in float64.
    """
    boxes = model.boxes
    for name, kinds in ((box, (Bilinear,)), (readout, (Linear, Unembed))):
        if name not in boxes or type(boxes[name]) not in kinds:
            raise BoxError(f"class_spectrum needs a {' or '.join(k.kind for k in kinds)} box named '{name}'; "
                           f"the model's boxes are {', '.join(boxes)}")
        if boxes[name].data.get("bias"):
            raise BoxError(f"class_spectrum needs box '{name}' without biases (a pure quadratic form)")
    if boxes[box].cod != boxes[readout].dom:
        raise BoxError(f"box '{readout}' ({boxes[readout].dom} -> ...) does not read the output of '{box}' "
                       f"({boxes[box].cod})")
    p = {k: v.detach().double().cpu() for k, v in model.box_params(box).items()}
    U = model.box_params(readout)["W"].detach().double().cpu()
    Q = torch.einsum("ch,hi,hj->cij", U @ p["D"], p["L"], p["R"])
    values, vectors = torch.linalg.eigh((Q + Q.transpose(1, 2)) / 2)
    order = values.abs().argsort(dim=1, descending=True, stable=True)
    values = values.gather(1, order)
    vectors = vectors.gather(2, order[:, None, :].expand_as(vectors)).transpose(1, 2)
    return values, vectors


def eigen_interpretation(model: Model, k: int, box: str = "mlp", readout: str = "unembed") -> Interpretation:
    """The eigen-explanation keeping ``k`` eigenvectors per class: ``box`` goes to a symmetric bilinear box
    ``<box>_eigen<k>`` (``L = R`` the kept eigenvectors, ``D[c, (c, m)] = lambda_cm``) straight to the
    logits, the wire between ``box`` and ``readout`` is read through ``readout`` (``sigma = U``), and
    ``readout`` goes to the identity."""
    values, vectors = class_spectrum(model, box, readout)
    classes, inputs = values.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= inputs:
        raise BoxError(f"k must be an integer from 1 to {inputs} (the eigenvectors per class), got {k!r}")
    dtype = next(model.parameters()).dtype
    boxes = model.boxes
    logits, hidden = boxes[readout].cod, boxes[box].cod
    rows = vectors[:, :k].reshape(classes * k, inputs)
    D = torch.zeros(classes, classes * k, dtype=torch.float64)
    for c in range(classes):
        D[c, c * k:(c + 1) * k] = values[c, :k]
    image = Bilinear(f"{box}_eigen{k}", boxes[box].dom, logits, hidden=classes * k)
    U = model.box_params(readout)["W"].detach()
    return Interpretation(model, boxes={box: image, readout: Id(logits)},
                          wires={hidden.wires[0].name: (logits, maps.linear(U))},
                          params={image.name: {"L": rows.to(dtype), "R": rows.to(dtype), "D": D.to(dtype)}})


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote (``out``, ``report``) and its numbers (``results.json``)."""

    out: Path
    report: Path
    numbers: dict[str, Any]

    def __str__(self) -> str:
        n = self.numbers
        refined = n["refinement"]
        return (f"digits model: held-out accuracy {n['model']['test_accuracy']:.4f}"
                f"{' (reused)' if n['model']['reused'] else ''}; eigen-explanation (k={n['explanation']['k']}): "
                f"faithfulness {n['explanation']['data']['end_to_end']['faithfulness']:.4f} on held-out digits, "
                f"{n['explanation']['exact']['end_to_end']['faithfulness']:.4f} exact under N(0, I)\n"
                f"refinement: {refined['original_bits']:,.0f} -> {refined['refined_bits']:,.0f} bits "
                f"({refined['ratio']:.1f}x shorter) at faithfulness {refined['faithfulness']:.4f} "
                f"(bar {refined['min_faithfulness']:g}); held-out accuracy of the refined model "
                f"{refined['held_out_accuracy']:.4f}\n"
                f"dictionary: TopK SAE on {n['dictionary']['wire']} ({n['dictionary']['width']} features, "
                f"k={n['dictionary']['k']}): faithfulness {n['dictionary']['local']:.4f} local (reconstruction), "
                f"{n['dictionary']['end_to_end']:.4f} end to end on held-out digits; "
                f"{n['dictionary']['bits']['total']:,.0f} bits (code, dictionary, error)\n"
                f"done in {n['seconds']['total']:.0f} s; report: {self.report}")


def run(out: str | Path = DEFAULT_OUT, *, device: str | torch.device = "cpu", seed: int = 0, k: int = 8,
        pictures: int = 4, min_faithfulness: float = 0.99, budget: int = 500, retrain: bool = False,
        progress: bool = True, trust_code: bool = False) -> DemoResult:
    """Run the demo into directory ``out``; returns where the report is and the numbers.

    Args:
        device: where to train, check and refine.
        seed: the digits model's seed (a model in ``out/model`` trained with the same seed,
            task and recipe is reused unless ``retrain``).
        k: eigenvectors per digit in the declared explanation.
        pictures: eigenvectors per digit drawn as images.
        min_faithfulness: the refinement's bar (end-to-end faithfulness on the training digits).
        budget: the most models the refinement search evaluates.
        trust_code: whether a reused ``out/model`` may have its ``opaque.pt`` unpickled (see
            :func:`compinterp.load`; the demo's own model has none, so a directory that needs it
            was not written by the demo and is refused without this).
    """

    start = time.perf_counter()
    out = Path(out)
    device = resolve_device(device)
    for name, value, low, high in (("k", k, 1, digits.PIXELS), ("pictures", pictures, 1, digits.PIXELS),
                                   ("budget", budget, 1, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            raise InputError(f"{name} must be an integer from {low}" + (f" to {high}" if high else " up")
                             + f", got {value!r}")
    if isinstance(min_faithfulness, bool) or not isinstance(min_faithfulness, (int, float)) \
            or not 0 <= min_faithfulness <= 1:
        raise InputError(f"min_faithfulness must be a number from 0 to 1, got {min_faithfulness!r}")
    if out.exists() and not out.is_dir():
        raise FormatError(f"cannot write the demo to {out}: it is a file")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    data = {split: tuple(t.to(device) for t in digits.load(split)) for split in ("train", "test")}

    # 1. A real model on real data: trained here, or the one trained here before with the same settings.
    model, numbers = _model(out, seed, device, retrain, progress, trust_code=trust_code)
    clock = {"train": time.perf_counter() - start}
    # 2. The declared eigen-explanation, checked on data and exactly, and the pictures of its eigenvectors.
    mark = time.perf_counter()
    declared, numbers["explanation"], numbers["eigenvectors"] = _explain(out, model, data, k, pictures,
                                                                         min_faithfulness)
    clock["explain"] = time.perf_counter() - mark
    # 3. The shortest model that keeps the bar on the training digits, then checked on held-out ones.
    mark = time.perf_counter()
    numbers["refinement"] = _refine(out, model, declared, data, min_faithfulness, budget, device, progress)
    clock["refine"] = time.perf_counter() - mark
    # 4. A dictionary: a TopK SAE on the wire out, its faithfulness, its bits and its top features.
    mark = time.perf_counter()
    numbers["dictionary"] = _dictionary(out, model, data, device, progress)
    clock["dictionary"] = time.perf_counter() - mark

    numbers["figures"] = {name: f"figures/{name}.{ext}" for name, ext in (
        ("model", "svg"), ("explanation", "svg"), ("refined", "svg"), ("eigenvectors", "png"),
        ("sweep", "png"), ("frontier", "png"), ("bits", "png"), ("dictionary", "svg"), ("features", "png"))}
    numbers["report"] = "report.html"
    numbers["seconds"] = clock | {"total": time.perf_counter() - start}
    write_atomically(out / RESULTS, lambda partial: partial.write_text(json.dumps(numbers, indent=1) + "\n"))
    return DemoResult(out, demo_report(out), numbers)


def _model(out: Path, seed: int, device: torch.device, retrain: bool, progress: bool, *,
           trust_code: bool = False) -> tuple[Model, dict[str, Any]]:
    """The digits model (reused from ``out/model`` when its ``train.json`` matches), drawn; the numbers so far."""

    task = digits.task()
    run_file = read_run(out / "model") if (out / "model").is_dir() and not retrain else None
    wanted = {"task": "digits", "model": task.default_model, "seed": seed, "recipe": task.recipe().to_json(),
              "options": dict(task.options)}
    reused = run_file is not None and all(run_file.get(key) == value for key, value in wanted.items())
    if reused:
        model, trained = load(out / "model", trust_code=trust_code).to(device), run_file
    else:
        check_target(out / "model")
        result = train(task, seed=seed, device=device, progress=progress)
        result.save(out / "model")
        model, trained = result.model, result.to_json()
    model.draw(out / "figures" / "model.svg")
    return model, {
        "compinterp_version": compinterp.__version__, "device": str(device),
        "model": {"path": "model", "reused": reused, "task": "digits", "model": task.default_model, "seed": seed,
                  "test_accuracy": trained["test_accuracy"], "train_accuracy": trained["train_accuracy"],
                  "epochs": trained["epochs"], "parameters": model.num_params(), "train_seconds": trained["seconds"],
                  "boxes": [{"name": b.name, "kind": b.kind, "dom": str(b.dom), "cod": str(b.cod)}
                            for _, b in model.diagram.walk()],
                  "bits": description_length(model).to_json()}}


def _explain(out: Path, model: Model, data: dict[str, tuple[torch.Tensor, ...]], k: int, pictures: int,
             bar: float) -> tuple[Interpretation, dict[str, Any], dict[str, Any]]:
    """Declare the eigen-explanation with ``k`` eigenvectors per digit and check it (per box and end to end
    on the held-out digits, exactly under ``N(0, I)`` and under a Gaussian fitted to the training pixels),
    for ``k`` and the sweep; save it, draw it and its eigenvectors."""

    figures = out / "figures"
    mean, cov = fit_gaussian(data["train"][0].double().cpu())
    sweep, checked = [], {}
    for kk in sorted({*SWEEP, k}):
        interp = eigen_interpretation(model, kk)
        on_data = check(model, interp, data["test"], progress=False, device=data["test"][0].device)
        exact = check(model, interp, "exact")
        fitted = exact_compare(model, interp.explanation, mean=mean, cov=cov)
        sweep.append({"k": kk, "faithfulness_data": on_data.end_to_end.faithfulness,
                      "faithfulness_exact": exact.end_to_end.faithfulness, "faithfulness_fitted": fitted.faithfulness,
                      "top1_agreement": on_data.end_to_end.top1,
                      "accuracy": _held_out_accuracy(interp.explanation, data)})
        if kk == k:
            checked = {"interp": interp, "data": on_data.to_json(), "exact": exact.to_json(),
                       "exact_fitted": fitted.to_json(), "accuracy": sweep[-1]["accuracy"]}
    declared = checked.pop("interp")
    declared.save(out / "explanation")
    declared.explanation.draw(figures / "explanation.svg")
    values, vectors = class_spectrum(model)
    save_figure(eigenvector_figure(values[:, :pictures], vectors[:, :pictures], side=digits.SIDE),
                figures / "eigenvectors.png")
    curves = {"held-out digits": [row["faithfulness_data"] for row in sweep],
              "exact, N(0, I)": [row["faithfulness_exact"] for row in sweep],
              "exact, Gaussian fitted to the digits": [row["faithfulness_fitted"] for row in sweep]}
    save_figure(sweep_figure([row["k"] for row in sweep], curves, bar=bar), figures / "sweep.png")
    explanation = {"path": "explanation", "k": k, **checked, "bits": description_length(declared).to_json(),
                   "sweep": sweep}
    eigen = {"k": pictures, "eigenvalues": values[:, :pictures].tolist(),
             "spectrum_norms": values.square().sum(1).sqrt().tolist()}
    return declared, explanation, eigen


def _refine(out: Path, model: Model, declared: Interpretation, data: dict[str, tuple[torch.Tensor, ...]],
            bar: float, budget: int, device: torch.device, progress: bool) -> dict[str, Any]:
    """Search for the shortest refinement keeping ``bar`` on the training digits; save, draw and check it;
    plot the frontier and the description lengths."""

    figures = out / "figures"
    refined = refine(model, bar, data=data["train"], budget=budget, progress=progress, device=device,
                     test_data=data["test"])
    refined.model.save(out / "refined")
    refined.model.draw(figures / "refined.svg")
    refined.frontier.plot(figures / "frontier.png", title="refining the digits model")
    original, explanation = description_length(model), description_length(declared)
    save_figure(bits_figure([("original model", original.structure, original.parameters),
                             ("declared eigen-explanation", explanation.structure, explanation.parameters),
                             ("refined model", refined.bits.structure, refined.bits.parameters)]),
                figures / "bits.png")
    return {"path": "refined", "data": "digits training split", **refined.to_json(),
            "exact_check": check(model, refined.model, "exact").to_json(),
            "held_out_accuracy": _held_out_accuracy(refined.model, data), "parameters": refined.model.num_params()}


def _dictionary(out: Path, model: Model, data: dict[str, tuple[torch.Tensor, ...]], device: torch.device,
                progress: bool) -> dict[str, Any]:
    """A TopK SAE (:data:`SAE_SETTINGS`) on the output wire of the bilinear layer, trained on the training
    digits; checked (its local square, the reconstruction, and end to end) and scored in bits on the held-out
    digits; its top features (by how often they fire times the size of their effect on the logits) described
    by their decoder direction, top-activating held-out digits and effect. The refined model is saved, drawn."""

    s = SAE_SETTINGS
    figures = out / "figures"
    sae = SAE(data["train"], [s["box"]], widths=[s["width"]], ks=[s["k"]], steps=s["steps"], lr=s["lr"],
              seed=s["seed"], device=device, progress=progress)
    rewrite = sae.candidates(model)[0]
    dictionary = sae.fit(model, rewrite)
    point = score(model, sae, rewrite, dictionary, data["test"], device=device)
    refined = point.model
    refined.save(out / "dictionary")
    refined.draw(figures / "dictionary.svg")
    x, y = data["test"]
    view = features(model, sae, rewrite, dictionary, data["test"], top=TOP_DIGITS)
    shown = sorted(view, key=lambda f: (-f.active * float(f.effect.norm()), f.index))[:SHOWN_FEATURES]
    labels = [[int(y[(x == row).all(-1)][0]) for row in f.top_inputs] for f in shown]
    save_figure(feature_figure([f.direction for f in shown], [f.top_inputs for f in shown],
                               [[f"{label}  ({value:.2f})" for label, value in zip(digits_, f.top_values.tolist())]
                                for f, digits_ in zip(shown, labels)],
                               [f.effect for f in shown], [f"feature {f.index}\n{f.active} digits" for f in shown],
                               side=digits.SIDE, top=TOP_DIGITS), figures / "features.png")
    with_code = description_length(refined, data=data["test"], device=device)
    return {"path": "dictionary", **s, "wire": str(model.boxes[s["box"]].cod), "kind": "topk",
            "trained_on": "digits training split", "checked_on": "held-out digits", "l0": point.l0,
            "local": point.local, "end_to_end": point.end_to_end,
            "held_out_accuracy": _held_out_accuracy(refined, data), "bits": point.bits.to_json(),
            "model_bits": {"original": description_length(model).model, "with_dictionary": with_code.model,
                           "code": with_code.code},
            "features": [{"index": f.index, "active": f.active, "top_values": f.top_values.tolist(),
                          "top_labels": digits_, "effect": f.effect.tolist(), "direction": f.direction.tolist()}
                         for f, digits_ in zip(shown, labels)]}


def _held_out_accuracy(model: Model, data: dict[str, tuple[torch.Tensor, ...]]) -> float:
    """The fraction of held-out digits whose argmax logit is the label."""
    return evaluate(model, "cross_entropy", data["test"])[1]
