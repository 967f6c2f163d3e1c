"""The language-model demo's report: one self-contained HTML page rendered from ``results.json`` and the figures.

>>> "induction" in SECTIONS and "transcoder" in SECTIONS
True
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compinterp.errors import FormatError
from compinterp.report.html import Section, code, image_file, items, paragraph, render, table, write

SECTIONS = ("numbers", "model", "induction", "mlps", "transcoder", "refinement", "reproduce")
"""The report's sections, in order (their HTML ids)."""


def lm_report(out: str | os.PathLike[str]) -> Path:
    """Render ``out/report.html`` from ``out/results.json`` and the figures beside it; returns its path."""
    out = Path(out)
    try:
        n = json.loads((out / "results.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FormatError(f"cannot read the LM demo's numbers {out / 'results.json'}: {err}") from None
    subtitle = (f"A byte-level transformer with bilinear MLPs on Python {n['model']['options']['corpus']['train']['python']}'s "
                "standard library, explained: induction heads, bilinear MLPs, a transcoder and a refinement.")
    return write(out / "report.html", render("compinterp: a language model, explained", _sections(out, n), subtitle))


def _sections(out: Path, n: Mapping[str, Any]) -> list[Section]:
    m, i, r, t = n["model"], n["induction"], n["refinement"], n["transcoder"]
    e, c = i["explanation"]["end_to_end"], i["control"]["end_to_end"]
    key = items([
        f"held-out bits per byte {m['bits_per_byte']:.3f}; induction score {m['induction']['score']:.3f} "
        f"({m['induction']['loss_first']:.2f} bits on the first copy of random bytes, "
        f"{m['induction']['loss_second']:.2f} on the second)",
        f"induction circuit {_head(i['previous_head'])} -> {_head(i['induction_head'])}: faithfulness "
        f"{e['faithfulness']:.3f}, loss recovered {_num(e['loss_recovered'])}; control "
        f"{_head(i['control_heads'][0])} -> {_head(i['control_heads'][1])}: faithfulness {c['faithfulness']:.3f}, "
        f"loss recovered {_num(c['loss_recovered'])}",
        *_alone(i),
        *(f"{x['box']}: eigen-truncation to {x['eigen_hidden']} components, exact faithfulness "
          f"{x['exact_faithfulness']:.3f}, held out {x['held_out']['faithfulness']:.3f}" for x in n["mlps"]),
        f"transcoder on {t['box']} ({t['width']} features, {t['k']} active): faithfulness {t['local']:.3f} local, "
        f"{t['end_to_end']:.3f} end to end",
        f"refined: {r['original_bits']:,.0f} -> {r['refined_bits']:,.0f} bits; held out: faithfulness "
        f"{r['held_out']['faithfulness']:.3f}, {r['held_out']['bits_per_byte']:.3f} bits per byte"])
    corpus = m["options"]["corpus"]
    model = (paragraph(f"{m['parameters']:,} parameters, trained for {m['steps']:,} steps in {m['seconds']:.0f} s"
                       + (" (reused from an earlier run)" if m["reused"] else "") + ". Corpus: "
                       f"{corpus['train']['bytes']:,} training bytes (sha256 {corpus['train']['sha256'][:16]}...) and "
                       f"{corpus['test']['bytes']:,} held-out bytes from {corpus['test']['stdlib']}; held out: "
                       f"{corpus['held_out']}. Another Python version gives a slightly different corpus.")
             + image_file(out / "figures" / "model.svg", "the model's diagram", "The model as a string diagram."))
    rows = [[box, h, s["previous"][h], s["induction"][h]] for box, s in i["head_scores"].items()
            for h in range(len(s["previous"]))]
    bits = [[side, v["first"], v["second"]] for side, v in i["bits"].items()]
    induction = (paragraph("Attention on random bytes repeated twice (length L each): a previous-token head attends "
                           "from each position to the one before; an induction head attends from query i >= L to "
                           "key i - L + 1, the byte after the earlier copy of the current byte. The hypothesis fixes "
                           "those two heads' patterns and mean-ablates every other head of their layers; the control "
                           "does the same with the lowest-scoring head of each layer.")
                 + table(["box", "head", "previous-token score", "induction score"], rows)
                 + table(["", "bits on the first copy", "bits on the second copy"], bits)
                 + _report_table("explanation", i["explanation"]) + _report_table("control", i["control"])
                 + ("" if "heads_alone" not in i else
                    paragraph("The weaker claim, that the two heads follow those patterns with every other head "
                              "left as it is, and its control:")
                    + _report_table("the two heads alone", i["heads_alone"]["explanation"])
                    + _report_table("control, alone", i["heads_alone"]["control"]))
                 + "".join(image_file(out / path, f"attention patterns of {box}", f"{box}: each head's pattern.")
                           for box, path in i["pattern_figures"].items()))
    mlps = "".join(_mlp(x) for x in n["mlps"])
    transcoder = (paragraph(f"A TopK transcoder in place of {t['box']} ({t['width']} features, {t['k']} active), "
                            f"trained on {t['trained_on']}: faithfulness {t['local']:.3f} for its own square, "
                            f"{t['end_to_end']:.3f} end to end, loss recovered {_num(t['loss_recovered'])}. "
                            "Its most often active features, with the held-out text where each is largest "
                            "(the byte at that position in brackets):")
                  + "".join(_feature(f) for f in t["features"]))
    refinement = (paragraph(f"The search kept {r['metric'].replace('_', ' ')} >= {r['min_faithfulness']} on {r['search_on']} "
                            f"with the passes {', '.join(r['passes'])} ({r['evaluated']} models evaluated). On held-out "
                            f"text the refined model has faithfulness {r['held_out']['faithfulness']:.3f}, loss recovered "
                            f"{_num(r['held_out']['loss_recovered'])} and {r['held_out']['bits_per_byte']:.3f} bits per "
                            f"byte (the model: {m['bits_per_byte']:.3f}).")
                  + table(["", "bits"], [["original", r["original_bits"]], ["refined", r["refined_bits"]]])
                  + code(" >> ".join(f"{h['pass']}({h['box']})" for h in r["history"]) or "(no rewrite kept)")
                  + image_file(out / r["frontier_figure"], "the refinement's frontier",
                               f"Bits against {r['metric'].replace('_', ' ')} on the search windows."))
    reproduce = code(f"compinterp demo lm --out {out}\n# results.json, report.html, model/, refined/, figures/\n"
                     f"# wall time: {n['seconds']['total']:.0f} s on {n['device']}")
    return [Section("numbers", "Key numbers", key), Section("model", "The model and its corpus", model),
            Section("induction", "Induction heads", induction), Section("mlps", "Bilinear MLPs", mlps),
            Section("transcoder", "A transcoder and its features", transcoder),
            Section("refinement", "Refinement", refinement), Section("reproduce", "Reproduce", reproduce)]


def _mlp(x: Mapping[str, Any]) -> str:
    head = paragraph(f"{x['box']} (hidden {x['hidden']}): keeping its top {x['eigen']['directions']} output "
                     f"directions with {x['eigen']['k']} eigenvectors each ({x['eigen_hidden']} components) is "
                     f"{x['exact_faithfulness']:.4f} faithful exactly (the box alone, Gaussian inputs, from the "
                     f"weights) and {x['held_out']['faithfulness']:.4f} end to end on held-out text "
                     f"({x['held_out']['bits_per_byte']:.3f} bits per byte).")
    rows = []
    for view in x["views"]:
        for k, vec in enumerate(view["eigenvectors"]):
            rows.append([view["direction"], " ".join(view["promotes"]) if k == 0 else "",
                         " ".join(view["suppresses"]) if k == 0 else "", vec["value"],
                         " ".join(b for b, _ in vec["reads"])])
    return head + table(["direction", "writes (promotes)", "writes (suppresses)", "eigenvalue",
                         "reads (bytes, direct path)"], rows, digits=3)


def _feature(f: Mapping[str, Any]) -> str:
    lines = "".join(f"<li><code>{html.escape(s['before'])}<b>[{html.escape(s['byte'])}]</b>"
                    f"{html.escape(s['after'])}</code> ({s['value']:.2f})</li>" for s in f["snippets"])
    return f"<p>feature {f['index']} (active at {f['active']:,} held-out positions)</p><ul>{lines}</ul>"


def _alone(induction: Mapping[str, Any]) -> list[str]:
    """The key line of the two heads' patterns checked with every other head left as it is (when there)."""
    if "heads_alone" not in induction:
        return []
    e, c = (induction["heads_alone"][side]["end_to_end"] for side in ("explanation", "control"))
    return [f"the two heads' patterns alone (every other head as it is): faithfulness {e['faithfulness']:.3f}, "
            f"loss recovered {_num(e['loss_recovered'])}; control {c['faithfulness']:.3f}, "
            f"loss recovered {_num(c['loss_recovered'])}"]


def _report_table(title: str, report: Mapping[str, Any]) -> str:
    rows = [[title + ": end to end", report["end_to_end"]["faithfulness"], report["end_to_end"].get("loss_recovered")]]
    rows += [[b["box"], b["faithfulness"], b.get("loss_recovered")] for b in report["boxes"] if b["kind"] == "Attention"]
    return table(["square", "faithfulness", "loss recovered"], rows, digits=4)


def _head(head: Sequence[Any]) -> str:
    return f"{head[0]}.{head[1]}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
