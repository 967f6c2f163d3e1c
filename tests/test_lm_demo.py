"""``compinterp demo lm`` on a small text model: its numbers recomputed from the files it wrote, a cached rerun, the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import compinterp as ci
from compinterp import demo_lm, lm
from compinterp.report.lm import SECTIONS
from compinterp.tasks import text


def small() -> Any:
    return text.task(context=32, width=32, heads=4, layers=2, hidden=32, train_bytes=65536, test_bytes=16384)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("lm")
    result = demo_lm.run(out, task=small(), progress=False)
    return out, result.numbers


def test_numbers_are_recomputed_from_the_saved_files(demo: tuple[Path, dict[str, Any]]) -> None:
    out, n = demo
    assert json.loads((out / "results.json").read_text()) == n
    model, refined = ci.load(out / "model"), ci.load(out / "refined")
    task = small()
    held_out = tuple(t[:demo_lm.HELD_OUT_WINDOWS] for t in task.data("test"))
    assert abs(text.bits_per_byte(model, text.windows(text.corpus("test", 16384), 32)).mean().item()
               - n["model"]["bits_per_byte"]) < 1e-4
    assert abs(ci.check(model, refined, held_out, progress=False).end_to_end.faithfulness
               - n["refinement"]["held_out"]["faithfulness"]) < 1e-4
    again = lm.explain_induction(model, n=demo_lm.REPEATS, alone=True)
    assert [again.previous, again.induction] == [tuple(n["induction"]["previous_head"]),
                                                 tuple(n["induction"]["induction_head"])]
    assert abs(again.report.end_to_end.faithfulness - n["induction"]["explanation"]["end_to_end"]["faithfulness"]) < 1e-6
    alone = n["induction"]["heads_alone"]
    assert abs(again.alone.end_to_end.faithfulness - alone["explanation"]["end_to_end"]["faithfulness"]) < 1e-6
    assert abs(again.alone_control.end_to_end.faithfulness - alone["control"]["end_to_end"]["faithfulness"]) < 1e-6


def test_report_has_every_section_and_inline_figures(demo: tuple[Path, dict[str, Any]]) -> None:
    out, n = demo
    page = (out / "report.html").read_text()
    assert all(f'<section id="{key}">' in page for key in SECTIONS)
    assert page.count("data:image/png;base64,") >= 3 and "http" not in page.replace("http-equiv", "")
    assert all((out / path).is_file() for path in n["induction"]["pattern_figures"].values())


def test_a_cached_model_is_reused_unless_asked(demo: tuple[Path, dict[str, Any]]) -> None:
    out, n = demo
    cpu = torch.device("cpu")
    _, again = demo_lm._model(out, small(), 0, cpu, False, False)
    assert again["model"]["reused"] and not n["model"]["reused"]
    assert again["model"]["bits_per_byte"] == n["model"]["bits_per_byte"]
    (out / "other" / "figures").mkdir(parents=True)
    _, other_seed = demo_lm._model(out / "other", small(), 1, cpu, False, False)
    assert not other_seed["model"]["reused"]
