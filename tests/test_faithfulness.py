"""The commutation checker: each number against an independent computation in plain torch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from support import Quadratic, quadratic, quadratic_rule

import compinterp as ci
from compinterp.data import gaussian, tensors
from compinterp.errors import BoxError, CompositionError, FormatError, InputError
from compinterp.faithfulness import FaithfulnessReport, check, interchange
from compinterp.interpretation import Interpretation, maps
from compinterp.model import Model
from compinterp.syntax import Bilinear, Copy, Linear, Space, Unembed, chain, residual

F64 = torch.float64
D, H, C, N = 6, 10, 5, 40
X, LOGITS = Space("x", D), Space("logits", C)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def build(dtype: torch.dtype = F64) -> Model:
    """Two residual bilinear layers and an unembedding to logits."""
    diagram = chain(residual(Bilinear("mlp0", X, X, hidden=H)), residual(Bilinear("mlp1", X, X, hidden=H)),
                    Unembed("out", X, LOGITS))
    return Model(diagram, seed=0, dtype=dtype)


def bil(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return F.linear(F.linear(x, p["L"]) * F.linear(x, p["R"]), p["D"])


def forward(p: dict[str, dict[str, torch.Tensor]], x: torch.Tensor, patch0: torch.Tensor | None = None) -> torch.Tensor:
    """The model by hand; ``patch0`` replaces the output of the first bilinear layer."""
    y0 = bil(p["mlp0"], x) if patch0 is None else patch0
    h = x + y0
    h = h + bil(p["mlp1"], h)
    return F.linear(h, p["out"]["W"])


def params_of(m: Model) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach() for k, v in m.box_params(name).items()} for name in ("mlp0", "mlp1", "out")}


def wrong_mlp1(m: Model) -> tuple[Interpretation, dict[str, torch.Tensor]]:
    """An explanation whose only wrong box is mlp1 (a perturbed copy)."""
    p = params_of(m)["mlp1"]
    bad = {"L": p["L"] + 0.3 * randn(H, D, seed=11, dtype=p["L"].dtype), "R": p["R"], "D": 1.5 * p["D"]}
    interp = Interpretation(m, boxes={"mlp1": Bilinear("mlp1_bad", X, X, hidden=H)}, params={"mlp1_bad": bad})
    return interp, bad


def expected(ym: torch.Tensor, ye: torch.Tensor) -> dict[str, float]:
    """FVU, relative L2 and mean cosine of two batches of vectors, computed directly."""
    err = (ym - ye).square().sum()
    return {"fvu": (err / (ym - ym.mean(0)).square().sum()).item(),
            "rel_l2": (err / ym.square().sum()).sqrt().item(),
            "cosine": F.cosine_similarity(ym, ye, dim=-1).mean().item()}


def assert_metrics(metrics: ci.faithfulness.Metrics, want: dict[str, float], tol: float = 1e-10) -> None:
    for key, value in want.items():
        assert getattr(metrics, key) == pytest.approx(value, rel=tol, abs=tol), key


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return randn(N, D, seed=1), torch.randint(0, C, (N,), generator=torch.Generator().manual_seed(2))


def test_identity_interpretation_commutes_everywhere(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    report = check(m, Interpretation(m), data, batch_size=7, progress=False)
    assert report.worst_box is None and report.exact is False and report.samples == N
    assert {row.box for row in report.boxes} == {"mlp0", "add#1", "mlp1", "add#2", "out"}
    for metrics in [report.end_to_end, *(row.metrics for row in report.boxes)]:
        assert metrics.faithfulness == 1.0 and metrics.rel_l2 == 0.0 and metrics.cosine == pytest.approx(1.0)
    assert report.end_to_end.kl == pytest.approx(0.0, abs=1e-15) and report.end_to_end.top1 == 1.0
    assert report.end_to_end.loss_recovered == pytest.approx(1.0)


def test_one_wrong_box_is_the_worst_and_the_rest_exact(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    interp, bad = wrong_mlp1(m)
    report = check(m, interp, data[0], batch_size=7, progress=False)
    assert report.worst_box == "mlp1" and report.boxes[0].box == "mlp1"
    assert all(row.metrics.fvu == 0.0 and row.metrics.faithfulness == 1.0 for row in report.boxes[1:])
    # the local square of mlp1, on the model's own activation entering it
    p, x = params_of(m), data[0]
    a = x + bil(p["mlp0"], x)
    assert_metrics(report.box("mlp1").metrics, expected(bil(p["mlp1"], a), bil(bad, a)))
    assert report.box("mlp1").metrics.n == N


def test_end_to_end_equals_an_independent_computation(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    interp, bad = wrong_mlp1(m)
    x, labels = data
    p = params_of(m)
    ym, ye = forward(p, x), forward(p | {"mlp1": bad}, x)
    assert torch.allclose(interp.explanation(x), ye, atol=1e-12)
    lm, le = F.log_softmax(ym, -1), F.log_softmax(ye, -1)
    kl = (lm.exp() * (lm - le)).sum(-1).mean().item()
    log_q = F.log_softmax(ym.mean(0), -1)
    kl_ablated = (lm.exp() * (lm - log_q)).sum(-1).mean().item()
    ce_m, ce_e = F.cross_entropy(ym, labels).item(), F.cross_entropy(ye, labels).item()
    ce_a = F.cross_entropy(log_q.expand(N, C), labels).item()
    want = expected(ym, ye) | {"kl": kl, "top1": (ym.argmax(-1) == le.argmax(-1)).double().mean().item()}

    unlabelled = check(m, interp, x, batch_size=9, progress=False).end_to_end
    assert_metrics(unlabelled, want | {"loss_recovered": 1 - kl / kl_ablated})
    assert unlabelled.ce_model is None
    labelled = check(m, interp, (x, labels), batch_size=9, progress=False).end_to_end
    assert_metrics(labelled, want | {"ce_model": ce_m, "ce_explanation": ce_e, "ce_ablated": ce_a,
                                     "loss_recovered": (ce_a - ce_e) / (ce_a - ce_m)})


def test_numbers_do_not_depend_on_the_batch_size(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build(torch.float32)
    interp, _ = wrong_mlp1(m)
    x, labels = data[0].float(), data[1]
    reports = [check(m, interp, (x, labels), batch_size=b, progress=False).to_json() for b in (1, 7, N)]
    for other in reports[1:]:
        assert [r["box"] for r in other["boxes"]] == [r["box"] for r in reports[0]["boxes"]]
        for row, ref in zip([other["end_to_end"], *other["boxes"]], [reports[0]["end_to_end"], *reports[0]["boxes"]]):
            for key, value in ref.items():
                if isinstance(value, float):
                    assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_data_forms_agree(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    interp, _ = wrong_mlp1(m)
    x = data[0]
    ref = check(m, interp, x, progress=False).to_json()
    loader = DataLoader(TensorDataset(x), batch_size=6)
    assert _close(check(m, interp, loader, progress=False).to_json() | {"data": None}, ref)
    assert _close(check(m, interp, tensors(x), batch_size=11, device="cpu", progress=False).to_json(), ref)
    g = gaussian(30, seed=4, dtype=F64)
    generated = torch.cat([b[0] for b in g.batches(30, (D,))])
    assert _close(check(m, interp, g, batch_size=4, progress=False).to_json() | {"data": None},
                  check(m, interp, generated, progress=False).to_json())
    assert check(m, interp, "gaussian:12", progress=False).samples == 12


def test_data_sources_shard_and_stream(tmp_path: Path) -> None:
    g = gaussian(50, seed=3, seq=2)
    whole = torch.cat([b[0] for b in g.batches(50, (4,))])
    assert whole.shape == (50, 2, 4)
    shards = [torch.cat([b[0] for b in g.batches(7, (4,), rank, 3)]) for rank in range(3)]
    assert torch.equal(torch.cat(shards), whole) and g.num_batches(7, 1, 3) == 3
    assert not torch.equal(whole, torch.cat([b[0] for b in gaussian(50, seed=4, seq=2).batches(50, (4,))]))
    x = torch.arange(10.0).unsqueeze(1)
    loader = ci.data.loader(DataLoader(TensorDataset(x), batch_size=3))
    assert [b[0].flatten().tolist() for b in loader.batches(99, (1,), rank=1, world=2)] == [[3.0, 4.0, 5.0], [9.0]]
    assert loader.num_batches(99, 1, 2) == 2
    torch.save((x, torch.zeros(10, dtype=torch.long)), tmp_path / "data.pt")
    assert [len(b) for b in ci.data.from_spec(str(tmp_path / "data.pt")).batches(4, (1,))] == [2, 2, 2]
    with pytest.raises(FormatError, match="no data file at .*missing.pt"):
        ci.data.from_spec(str(tmp_path / "missing.pt"))
    (tmp_path / "bad.pt").write_text("not a tensor")
    with pytest.raises(FormatError, match="bad.pt cannot be read as tensors"):
        ci.data.from_file(tmp_path / "bad.pt")
    with pytest.raises(InputError, match="bad data spec 'gaussian:x': write gaussian:N or gaussian:N:SEED"):
        ci.data.from_spec("gaussian:x")
    with pytest.raises(InputError, match="gaussian\\(\\) needs a positive number of samples, got 0"):
        gaussian(0)


def _close(a: dict, b: dict, tol: float = 1e-9) -> bool:
    """Two report JSONs equal up to ``tol`` in every number."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(u, v, tol) for u, v in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


def test_semantic_maps_enter_both_paths(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """A change of basis q on the residual wire, with every box rotated, commutes; a projection does not."""
    m = build()
    x, p = data[0], params_of(m)
    q = torch.linalg.qr(randn(D, D, seed=5))[0]
    rot = {name: {"L": p[name]["L"] @ q.T, "R": p[name]["R"] @ q.T, "D": q @ p[name]["D"]} for name in ("mlp0", "mlp1")}
    images = {"mlp0": Bilinear("r0", X, X, hidden=H), "mlp1": Bilinear("r1", X, X, hidden=H),
              "out": Unembed("r_out", X, LOGITS)}
    params = {"r0": rot["mlp0"], "r1": rot["mlp1"], "r_out": {"W": p["out"]["W"] @ q.T}}
    report = check(m, Interpretation(m, boxes=images, wires={"x": maps.linear(q)}, params=params), x, progress=False)
    assert report.end_to_end.fvu < 1e-20 and all(row.metrics.fvu < 1e-20 for row in report.boxes)

    # project onto the first 3 coordinates: sigma = P, every box keeps its weights restricted
    k, P = 3, torch.eye(D, dtype=F64)[:3]
    small = Space("x", k)
    images = {"mlp0": Bilinear("s0", small, small, hidden=H), "mlp1": Bilinear("s1", small, small, hidden=H),
              "out": Unembed("s_out", small, LOGITS)}
    params = {"s0": {"L": p["mlp0"]["L"][:, :k], "R": p["mlp0"]["R"][:, :k], "D": p["mlp0"]["D"][:k]},
              "s1": {"L": p["mlp1"]["L"][:, :k], "R": p["mlp1"]["R"][:, :k], "D": p["mlp1"]["D"][:k]},
              "s_out": {"W": p["out"]["W"][:, :k]}}
    report = check(m, Interpretation(m, boxes=images, wires={"x": maps.linear(P)}, params=params), x, progress=False)
    a = x + bil(p["mlp0"], x)
    assert_metrics(report.box("mlp1").metrics, expected(bil(p["mlp1"], a)[:, :k], bil(params["s1"], a[:, :k])))
    assert_metrics(report.box("out").metrics,
                   expected(F.linear(a + bil(p["mlp1"], a), p["out"]["W"]),
                            F.linear((a + bil(p["mlp1"], a))[:, :k], params["s_out"]["W"])))
    assert report.box("add#1").metrics.fvu == pytest.approx(0.0, abs=1e-24)  # a linear map commutes with adding
    h = x[:, :k] + bil(params["s0"], x[:, :k])
    ye = F.linear(h + bil(params["s1"], h), params["s_out"]["W"])
    assert_metrics(report.end_to_end, expected(forward(p, x), ye))


def test_an_sae_style_map_with_matching_images_commutes(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """sigma = relu([I; -I] x) is undone by [I, -I]; images decode, compute, encode. The default image of
    an add (adding features) does not commute with a non-linear sigma, and the check says so."""
    m = build()
    x, feat = data[0], Space("feat", 2 * D)
    eye = torch.eye(D, dtype=F64)
    enc, dec = torch.cat([eye, -eye]), torch.cat([eye, -eye], 1)
    sae = maps.encoder_decoder(enc, dec)
    assert torch.allclose(sae.decode(sae(x)), x, atol=1e-15)

    def encode(name: str) -> ci.Diagram:
        return Linear(f"enc_{name}", X, feat) >> ci.Elementwise("relu", feat, name=f"relu_{name}")

    dec_box = Linear("dec", feat, X)
    images = {name: dec_box >> Bilinear(name, X, X, hidden=H) >> encode(name) for name in ("mlp0", "mlp1")}
    images["out"] = dec_box >> Unembed("out", X, LOGITS)
    params = {"dec": {"W": dec}, "enc_mlp0": {"W": enc}, "enc_mlp1": {"W": enc}}
    naive = check(m, Interpretation(m, boxes=images, wires={"x": (feat, sae)}, params=params), x, progress=False)
    assert naive.worst_box in ("add#1", "add#2") and naive.box("add#1").metrics.fvu > 1e-3
    assert all(naive.box(name).metrics.fvu < 1e-24 for name in ("mlp0", "mlp1", "out"))

    images["add"] = dec_box @ dec_box >> ci.Add(X) >> encode("add")
    params["enc_add"] = {"W": enc}
    exact = check(m, Interpretation(m, boxes=images, wires={"x": (feat, sae)}, params=params), x, progress=False)
    assert all(row.metrics.fvu < 1e-24 for row in exact.boxes) and exact.end_to_end.fvu < 1e-24


def test_sequence_inputs_count_every_position() -> None:
    seq = Model(ci.Attention("attn", X, heads=2) >> Unembed("out", X, LOGITS), seed=0, dtype=F64)
    report = check(seq, Interpretation(seq), gaussian(6, seq=4, dtype=F64), batch_size=4, progress=False)
    assert report.samples == 6 and report.end_to_end.n == 24 and report.end_to_end.fvu == 0.0
    assert report.box("attn").metrics.n == 24


def test_explanation_box_of_a_user_defined_kind(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    x, p = data[0], params_of(m)
    quad = {"L": p["mlp0"]["L"], "D": p["mlp0"]["D"]}
    interp = Interpretation(m, boxes={"mlp0": Quadratic("quad", X, X, hidden=H)}, params={"quad": quad},
                            rules={"Quadratic": quadratic_rule})
    report = check(m, interp, x, progress=False)
    assert report.worst_box == "mlp0"
    assert_metrics(report.box("mlp0").metrics, expected(bil(p["mlp0"], x), quadratic(quad, x)[0]))
    ye = F.linear((lambda h: h + bil(p["mlp1"], h))(x + quadratic(quad, x)[0]), p["out"]["W"])
    assert_metrics(report.end_to_end, expected(forward(p, x), ye))


def test_a_refined_model_is_compared_end_to_end(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    interp, bad = wrong_mlp1(m)
    refined = interp.explanation
    x, p = data[0], params_of(m)
    report = check(m, refined, x, batch_size=13, progress=False)
    assert report.boxes == () and report.worst_box is None
    assert_metrics(report.end_to_end, expected(forward(p, x), forward(p | {"mlp1": bad}, x)))
    assert _close(report.end_to_end.to_json(), check(m, interp, x, progress=False).end_to_end.to_json())
    with pytest.raises(CompositionError, match=r"cannot compare the model \(x:6 -> logits:5\) with a second model "
                                               r"\(x:6 -> x:6\): a refinement must have the same input and output"):
        check(m, Model(Linear("f", X, X)), x)


def test_interchange_intervention_against_hand_patching(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    interp, bad = wrong_mlp1(m)
    base, source = data[0], randn(N, D, seed=7)
    p = params_of(m)
    report = interchange(m, interp, base, source, "mlp0", batch_size=8, progress=False)
    assert report.intervention == {"wire": "mlp0", "output": 0, "space": "x:6"}
    v = bil(p["mlp0"], source)
    ym, ye = forward(p, base, patch0=v), forward(p | {"mlp1": bad}, base, patch0=v)
    assert_metrics(report.end_to_end, expected(ym, ye) | {"top1": (ym.argmax(-1) == ye.argmax(-1)).double().mean().item()})
    h = base + v  # the activation entering mlp1 after the patch
    assert_metrics(report.box("mlp1").metrics, expected(bil(p["mlp1"], h), bil(bad, h)))
    assert report.box("mlp0").metrics.fvu == 0.0

    exact = interchange(m, Interpretation(m), base, source, "add#1", progress=False)
    assert exact.end_to_end.fvu == 0.0 and exact.end_to_end.top1 == 1.0
    assert "interchange on add#1 output 0" in str(exact)


def test_report_prints_and_serialises(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    report = check(m, wrong_mlp1(m)[0], data, progress=False)
    text = str(report)
    lines = text.splitlines()
    assert lines[0] == f"faithfulness report ({N} samples)"
    assert lines[1].split() == ["faithful", "FVU", "rel", "L2", "cosine"]
    assert lines[2].startswith("end to end") and "loss recovered" in lines[3]
    assert lines[4].startswith("  accuracy on the labels: model ") and lines[5] == "boxes, worst first:"
    assert lines[6].startswith("mlp1 (Bilinear)") and lines[-2] == "worst box: mlp1"
    assert report.box("mlp1").metrics.faithfulness < 0 and lines[-1].startswith("faithfulness below 0 (FVU above 1)")
    obj = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert {"faithfulness", "fvu", "rel_l2", "cosine", "kl", "top1", "loss_recovered"} <= set(obj["end_to_end"])
    assert set(obj["boxes"][0]) >= {"box", "faithfulness", "fvu", "rel_l2", "cosine"}
    assert obj["worst_box"] == "mlp1" and obj["exact"] is False
    assert FaithfulnessReport.from_json(obj) == report
    with pytest.raises(BoxError, match="no box 'nope' in this report; its boxes: mlp1, "):
        report.box("nope")


def test_public_names() -> None:
    assert ci.check is check and ci.Interpretation is Interpretation and ci.maps is maps
    assert ci.data.gaussian is gaussian and ci.FaithfulnessReport is FaithfulnessReport


def test_bad_data_gives_clear_errors(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    interp = Interpretation(m)
    with pytest.raises(InputError, match=r"batch 0: wire x:6 takes \(samples, 6\), but the data has shape \(4, 5\): "
                                         "its last axis must be 6"):
        check(m, interp, randn(4, 5), progress=False)
    nan = randn(10, D)
    nan[7, 2] = math.nan
    with pytest.raises(InputError, match=r"batch 1: wire x:6 contains NaN or infinite values"):
        check(m, interp, nan, batch_size=5, progress=False)
    with pytest.raises(InputError, match="the data holds no samples: nothing to check"):
        check(m, interp, randn(0, D), progress=False)
    with pytest.raises(InputError, match="the data holds no samples"):
        check(m, interp, DataLoader(TensorDataset(randn(0, D)), batch_size=4), progress=False)
    with pytest.raises(InputError, match=r"batch 0 of the data has 3 tensors; the model takes 1 input\(s\) \(x:6\), "
                                         "optionally followed by labels"):
        check(m, interp, (randn(4, D), randn(4, D), randn(4, D)), progress=False)
    with pytest.raises(InputError, match=r"batch 0: labels must lie in \[0, 5\), got values from 0 to 7"):
        check(m, interp, (randn(4, D), torch.tensor([0, 1, 7, 2])), progress=False)
    with pytest.raises(InputError, match=r"batch 0: labels must be integer class ids of shape \(4,\)"):
        check(m, interp, (randn(4, D), randn(4)), progress=False)
    with pytest.raises(InputError, match="data tensors disagree on the number of samples"):
        check(m, interp, (randn(4, D), torch.zeros(3, dtype=torch.long)), progress=False)
    with pytest.raises(InputError, match="cannot read data from a dict"):
        check(m, interp, {"x": randn(4, D)}, progress=False)
    with pytest.raises(InputError, match="unknown data spec 'digits'"):
        check(m, interp, "digits", progress=False)
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        check(m, interp, randn(4, D), batch_size=0, progress=False)
    with pytest.raises(InputError, match="the square of box 'mlp0' has NaN or infinite values on this data"):
        check(m, interp, 1e120 * randn(4, D), progress=False)


def test_bad_arguments_give_clear_errors(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = build()
    interp = Interpretation(m)
    x = data[0]
    with pytest.raises(BoxError, match="no box 'nope' to intervene on; the model's boxes are mlp0, add#1, mlp1"):
        interchange(m, interp, x, x, "nope")
    with pytest.raises(BoxError, match=r"box 'mlp0' \(mlp0 \(x:6 -> x:6\)\) has 1 output\(s\); output 1 does not exist"):
        interchange(m, interp, x, x, "mlp0", output=1)
    with pytest.raises(BoxError, match="an interchange needs an Interpretation that maps each box"):
        interchange(m, interp.explanation, x, x, "mlp0")
    with pytest.raises(InputError, match=r"the source batch gives x:6 of shape \(3, 6\) but the base batch has "
                                         r"\(4, 6\)"):
        interchange(m, interp, x[:4], x[:3], "mlp0", progress=False)
    with pytest.raises(InputError, match="the base and source data have different numbers of batches"):
        interchange(m, interp, x[:8], x[:4], "mlp0", batch_size=4, progress=False)
    with pytest.raises(CompositionError, match="the interpretation explains another diagram"):
        check(build(), Interpretation(Model(Linear("f", X, X))), x)
    with pytest.raises(BoxError, match="check\\(\\) compares a model with an Interpretation or a second Model, got str"):
        check(m, "interp", x)
    two = Model(Copy(X))
    with pytest.raises(BoxError, match=r"logit metrics need one output wire; the model outputs x:6 @ x:6"):
        check(two, Interpretation(two), x, logits=True)
