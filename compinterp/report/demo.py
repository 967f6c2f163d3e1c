"""The demo's report: ``report.html`` rendered from a demo directory's ``results.json`` and figures.

Rendering reads only files, so a report can be remade (or restyled) from a finished
run without training or refining again: ``demo_report("runs/demo")``.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compinterp.errors import FormatError
from compinterp.report.html import Section, code, image_file, items, paragraph, render, table, write

SECTIONS = ("summary", "model", "explanation", "eigenvectors", "refinement", "dictionary", "description-length",
            "files")
"""The ids of the report's sections, in order."""


def demo_report(out: str | os.PathLike[str]) -> Path:
    """Render ``out/report.html`` from ``out/results.json`` and the figures it names; returns its path."""
    out = Path(out)
    file = out / "results.json"
    try:
        numbers = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{out} holds no demo results ({file.name} is missing): run compinterp demo first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(f"cannot read {file}: {err}") from None
    try:
        sections = _sections(out, numbers)
    except (KeyError, TypeError, IndexError) as err:
        raise FormatError(f"{file} is not a complete demo result: missing or malformed {err}") from None
    m = numbers["model"]
    subtitle = (f"A bilinear classifier of sklearn's 8x8 digits ({m['parameters']:,} parameters), an explanation "
                f"checked for faithfulness, and a refinement scored in bits. compinterp "
                f"{numbers['compinterp_version']}, {numbers['device']}.")
    return write(out / numbers["report"], render("compinterp demo: explaining a digits classifier", sections,
                                                 subtitle))


def _figure(out: Path, numbers: Mapping[str, Any], name: str, alt: str, caption: str) -> str:
    return image_file(out / numbers["figures"][name], alt, caption)


def _sections(out: Path, n: Mapping[str, Any]) -> list[Section]:
    """Every section of the report, in the order of :data:`SECTIONS`."""
    m, e, r, d = n["model"], n["explanation"], n["refinement"], n["dictionary"]
    data_e2e = e["data"]["end_to_end"]
    summary = "".join([
        f'<p class="key">Held-out accuracy of the model: <b>{m["test_accuracy"]:.4f}</b>; '
        f'eigen-explanation with k = {e["k"]}: faithfulness <b>{data_e2e["faithfulness"]:.4f}</b> on the '
        f'held-out digits; refinement: <b>{r["ratio"]:.1f}x</b> fewer bits at faithfulness '
        f'<b>{r["faithfulness"]:.4f}</b> (bar {r["min_faithfulness"]:g}).</p>',
        table(["", "value"], [
            ["held-out accuracy (359 digits)", m["test_accuracy"]],
            ["model", f"{m['model']} ({m['parameters']:,} parameters, {m['epochs']} epochs"
                      f"{', reused' if m['reused'] else ''})"],
            [f"explanation faithfulness, held-out digits (k={e['k']})", data_e2e["faithfulness"]],
            [f"explanation faithfulness, exact N(0, I) (k={e['k']})", e["exact"]["end_to_end"]["faithfulness"]],
            ["explanation top-1 agreement with the model", data_e2e["top1"]],
            ["original description length (bits)", r["original_bits"]],
            ["refined description length (bits)", r["refined_bits"]],
            ["compression ratio at the bar", r["ratio"]],
            ["refined model: faithfulness on held-out digits", r["held_out"]["end_to_end"]["faithfulness"]],
            ["refined model: held-out accuracy", r["held_out_accuracy"]],
            [f"TopK SAE on {d['wire']} ({d['width']} features, k={d['k']}): local faithfulness", d["local"]],
            ["TopK SAE: end-to-end faithfulness, held-out digits", d["end_to_end"]],
            ["wall time (s)", n["seconds"]["total"]],
        ]),
    ])
    model = "".join([
        paragraph("The model is a string diagram: pixels:64 enter a bilinear layer mlp, y = D((L x) * (R x)), "
                  "whose output wire out:64 the unembedding reads into logits:10. The same diagram is run as "
                  "torch by the semantic functor and trained with AdamW on 1,438 digits; 359 are held out."),
        _figure(out, n, "model", "the model's string diagram", "The model's diagram (syntax): boxes by name and "
                                                                "kind, wires labelled with their spaces."),
        table(["box", "kind", "input", "output"], [[b["name"], b["kind"], b["dom"], b["cod"]] for b in m["boxes"]]),
        table(["", "value"], [["train accuracy", m["train_accuracy"]], ["held-out accuracy", m["test_accuracy"]],
                              ["training time (s)", m["train_seconds"]]]),
    ])
    explanation = "".join([
        paragraph(f"The declared explanation says each digit's logit is a sum of squares of k = {e['k']} "
                  "eigenvectors of that digit's quadratic form: logit_c(x) = sum_m lambda_cm (v_cm . x)^2. "
                  "As an interpretation: the box mlp goes to a symmetric bilinear box whose hidden units are the "
                  "kept eigenvectors, the wire out is read through the unembedding (sigma = U, so it carries "
                  "logits), and the unembedding goes to the identity. The checker compares both paths of every "
                  "square: per box on the model's own activations, and end to end."),
        _figure(out, n, "explanation", "the explanation's string diagram", "The explanation's diagram."),
        "<h3>Faithfulness per box (held-out digits), worst first</h3>",
        _box_table(e["data"]["boxes"]),
        "<h3>End to end</h3>",
        table(["measure", "faithfulness", "FVU", "rel. L2", "cosine", "top-1 agreement", "KL"], [
            ["held-out digits", data_e2e["faithfulness"], data_e2e["fvu"], data_e2e["rel_l2"], data_e2e["cosine"],
             data_e2e["top1"], data_e2e["kl"]],
            ["exact, N(0, I)", e["exact"]["end_to_end"]["faithfulness"], e["exact"]["end_to_end"]["fvu"],
             e["exact"]["end_to_end"]["rel_l2"], e["exact"]["end_to_end"]["cosine"], None, None],
            ["exact, N(mean, cov) fitted to the training digits", e["exact_fitted"]["end_to_end"]["faithfulness"],
             e["exact_fitted"]["end_to_end"]["fvu"], e["exact_fitted"]["end_to_end"]["rel_l2"],
             e["exact_fitted"]["end_to_end"]["cosine"], None, None]]),
        paragraph(f"The explanation alone classifies {e['accuracy']:.2%} of the held-out digits correctly. "
                  "How faithfulness grows with the eigenvectors kept:"),
        table(["k", "held-out digits", "exact N(0, I)", "exact fitted Gaussian", "top-1 agreement", "accuracy"],
              [[row["k"], row["faithfulness_data"], row["faithfulness_exact"], row["faithfulness_fitted"],
                row["top1_agreement"], row["accuracy"]] for row in e["sweep"]]),
        _figure(out, n, "sweep", "faithfulness against the eigenvectors kept per digit",
                "Faithfulness of the eigen-explanation against k, on data and exactly."),
    ])
    values = n["eigenvectors"]["eigenvalues"]
    norms = n["eigenvectors"]["spectrum_norms"]
    k = n["eigenvectors"]["k"]
    eigen = "".join([
        paragraph(f"The top {k} eigenvectors of each digit's quadratic form Q_c, as 8x8 images (red: positive "
                  "pixels, blue: negative; each image on its own scale), titled with their eigenvalues. A positive "
                  "eigenvalue adds evidence for the digit when the image matches the pattern (or its negative); a "
                  "negative one takes evidence away."),
        _figure(out, n, "eigenvectors", "top eigenvectors per digit as 8x8 images",
                f"Rows: digits 0-9; columns: the {k} eigenvectors with the largest |lambda|."),
        table(["digit", *(f"lambda_{i + 1}" for i in range(k)), f"share of ||Q_c||^2 in the top {k}"],
              [[str(c), *row, sum(v * v for v in row) / norms[c] ** 2 if norms[c] else math.nan]
               for c, row in enumerate(values)], digits=4),
    ])
    h = r["held_out"]["end_to_end"]
    refinement = "".join([
        paragraph(f"The refinement search rewrites the model's own diagram (eigen, low-rank, prune, fuse, ODT, CP "
                  f"passes, then quantisation) and keeps every candidate's description length and faithfulness "
                  f"to the original, measured on the {r['data']}; it returns the shortest that keeps faithfulness "
                  f"{r['min_faithfulness']:g}. {r['evaluated']} models were evaluated."),
        _figure(out, n, "frontier", "the Pareto frontier of bits against faithfulness",
                "Pareto frontier: description length (bits) against faithfulness; the chosen model is starred."),
        paragraph("Rewrites, in order: " + (" >> ".join(_rewrite(x) for x in r["history"]) or "none")),
        "<h3>Before and after</h3>",
        _figure(out, n, "model", "diagram before refinement", "Before: the trained model."),
        _figure(out, n, "refined", "diagram after refinement", "After: the refined model."),
        table(["", "original", "refined"], [
            ["description length (bits)", r["original_bits"], r["refined_bits"]],
            ["parameters", m["parameters"], r["parameters"]],
            ["held-out accuracy", m["test_accuracy"], r["held_out_accuracy"]],
            ["faithfulness to the original, training digits (search)", 1.0, r["faithfulness"]],
            ["faithfulness to the original, held-out digits", 1.0, h["faithfulness"]],
            ["faithfulness to the original, exact N(0, I)", 1.0, r["exact_check"]["end_to_end"]["faithfulness"]],
            ["top-1 agreement, held-out digits", 1.0, h["top1"]]]),
        "<h3>Frontier</h3>",
        table(["bits", "faithfulness", "rewrites"],
              [[p["bits"], p["faithfulness"], " >> ".join(p["passes"]) or "(original)"] for p in r["frontier"]]),
    ])
    dictionary = _dictionary(out, n, d)
    dl = "".join([
        paragraph("Description length counts what a reader must be told to rebuild a model: structure (which "
                  "boxes, which wires) and parameters (each stored number at its precision: 32 bits, or the "
                  "bits of its quantisation grid). docs/description_length.md writes out every term."),
        _figure(out, n, "bits", "description length of the original, the explanation and the refined model",
                "Description lengths in bits (log scale)."),
        _bits_table("Original model", m["bits"]),
        _bits_table(f"Eigen-explanation (k={e['k']}, with its wire map)", e["bits"]),
        _bits_table("Refined model", r["description_length"]),
    ])
    files = "".join([
        paragraph("Everything in this report was written beside it:"),
        items([f"{m['path']}/: the trained model (diagram.json, weights.safetensors, meta.json, train.json)",
               f"{e['path']}/: the declared explanation (an interpretation directory)",
               f"{r['path']}/: the refined model",
               f"{d['path']}/: the model with its sparse autoencoder on {d['wire']}",
               "results.json: every number in this report",
               "figures/: the diagrams (SVG) and plots (PNG)"]),
        paragraph("Reproduce or explore with the command line:"),
        code("compinterp demo --out runs/demo\n"
             "compinterp info runs/demo/refined\n"
             "compinterp check runs/demo/model runs/demo/explanation --data digits\n"
             "compinterp check runs/demo/model runs/demo/refined --data exact\n"
             "compinterp check runs/demo/model runs/demo/dictionary --data digits\n"
             "compinterp refine runs/demo/model --data digits --out runs/refined"),
        table(["step", "seconds"], [[step, secs] for step, secs in n["seconds"].items()], digits=3),
    ])
    bodies = (summary, model, explanation, eigen, refinement, dictionary, dl, files)
    titles = ("At a glance", "The model", "A declared explanation, checked", "Eigenvectors per digit",
              "Refinement: a shorter model", "Dictionary features", "Description length", "Files and commands")
    return [Section(key, title, body) for key, title, body in zip(SECTIONS, titles, bodies)]


def _dictionary(out: Path, n: Mapping[str, Any], d: Mapping[str, Any]) -> str:
    """The section on the sparse autoencoder: what it is, its faithfulness and bits, its top features."""
    b, mb = d["bits"], d["model_bits"]
    return "".join([
        paragraph(f"A sparse autoencoder refines the wire {d['wire']} (the output of the bilinear layer "
                  f"{d['box']}) into {d['width']} features, of which the {d['k']} largest are kept per digit (TopK): "
                  f"{d['box']} >> enc >> relu >> topk >> dec, through a new wire features:{d['width']}. It was "
                  f"trained for {d['steps']} Adam steps on the {d['trained_on']}, decoder columns at unit norm, "
                  f"and is checked on the {d['checked_on']}: the local square is its reconstruction of "
                  f"{d['wire']}, the end-to-end square the logits computed from that reconstruction. The "
                  "features are the explanation's vocabulary: each is a decoder direction on the wire, fires on "
                  "some digits, and moves the logits."),
        _figure(out, n, "dictionary", "the model with the sparse autoencoder",
                "The refined diagram: the autoencoder's boxes after mlp, and the wire features."),
        table(["", "value"], [
            ["features (F)", d["width"]], ["active per digit (k; L0 measured)", f"{d['k']} ({d['l0']:.3g})"],
            ["local faithfulness (reconstruction of the wire)", d["local"]],
            ["end-to-end faithfulness (logits)", d["end_to_end"]],
            ["held-out accuracy with the autoencoder in place", d["held_out_accuracy"]],
            [f"code: {b['examples']} digits x L0 x (8 + log2 {b['width']}) (bits)", b["code"]],
            ["dictionary parameters (bits)", b["parameters"]],
            ["error of the reconstruction (bits)", b["error"]],
            ["total (bits)", b["total"]],
            ["model with the autoencoder: structure + parameters + code (bits, the search's scale)",
             mb["with_dictionary"]],
            ["original model: structure + parameters (bits)", mb["original"]]]),
        paragraph(f"On the refinement search's scale the model with the autoencoder costs "
                  f"{mb['with_dictionary']:,.0f} bits against {mb['original']:,.0f} for the original: it keeps "
                  f"{d['box']} and adds the dictionary's parameters and {mb['code']:,.0f} bits of code for the "
                  "held-out digits. It explains the wire rather than compressing the model; it is shown here for "
                  "its features."),
        _figure(out, n, "features", "the top features: decoder directions, top digits, effects on the logits",
                f"The {len(d['features'])} features that fire most times the size of their effect: decoder "
                "direction on the wire (red positive, blue negative), the held-out digits they fire most on "
                "(label and activation), and their effect on each logit: the logits with the feature minus the "
                "logits with it zeroed, averaged over the digits it fires on."),
        table(["feature", "fires on (held-out digits)", "top digits", "largest effect on a logit"],
              [[f["index"], f["active"], " ".join(str(label) for label in f["top_labels"]), _largest(f["effect"])]
               for f in d["features"]]),
    ])


def _largest(effect: Sequence[float]) -> str:
    """``digit 3: +1.25``, the logit a feature moves most."""
    c = max(range(len(effect)), key=lambda i: abs(effect[i]))
    return f"digit {c}: {effect[c]:+.3g}"


def _box_table(rows: Sequence[Mapping[str, Any]]) -> str:
    return table(["box", "kind", "input", "output", "faithfulness", "FVU", "rel. L2", "cosine"],
                 [[b["box"], b["kind"], b["dom"], b["cod"], b["faithfulness"], b["fvu"], b["rel_l2"], b["cosine"]]
                  for b in rows])


def _bits_table(title: str, bits: Mapping[str, Any]) -> str:
    rows = [[p["name"], p["kind"], p["structure"], p["parameters"], p["numbers"]] for p in bits["parts"]]
    rows.append(["total", "", bits["structure"], bits["parameters"], sum(p["numbers"] for p in bits["parts"])])
    header = ["part", "kind", "structure (bits)", "parameters (bits)", "numbers"]
    return f"<h3>{html.escape(title)}</h3>" + table(header, rows)


def _rewrite(entry: Mapping[str, Any]) -> str:
    settings = "".join(f", {k}={v}" for k, v in entry["settings"].items())
    return f"{entry['pass']}({entry['box']}{settings})"
