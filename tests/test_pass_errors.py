"""Bad input to the rewrite passes: one-line errors naming the box and the setting at fault."""

from __future__ import annotations

import pytest
import torch

from compinterp.errors import BoxError, CompinterpError
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.passes import Eigen, cp, eigen, fuse, lowrank, odt, prune
from compinterp.syntax import Attention, Bilinear, Embed, Gated, Linear, Space, Unembed, chain, residual

x, y = Space("x", 4), Space("y", 3)


@pytest.fixture(scope="module")
def model() -> Model:
    return Model(chain(Linear("embed", Space("pixels", 5), x),
                       residual(Bilinear("mlp", x, x, hidden=6, bias=True)),
                       residual(Gated("glu", x, x, hidden=2)), Unembed("out", x, y)), seed=0)


@pytest.mark.parametrize(("call", "message"), [
    (lambda m: eigen(m,
     "nope", k=1), "eigen: the model has no box named 'nope'; its boxes are embed, copy, mlp, add, glu, out"),
    (lambda m: eigen(m,
     "embed", k=1), "eigen: box 'embed' is a Linear box (pixels:5 -> x:4); eigen rewrites Bilinear boxes"),
    (lambda m: eigen(m, "glu", k=1), "eigen: box 'glu' is a Gated box (x:4 -> x:4); eigen rewrites Bilinear boxes"),
    (lambda m: eigen(m, "mlp", k=0), "eigen: k=0 is out of range for box 'mlp': it must be an integer from 1 to 5"),
    (lambda m: eigen(m, "mlp", k=6), "eigen: k=6 is out of range for box 'mlp': it must be an integer from 1 to 5"),
    (lambda m: eigen(m, "mlp", k=2, mode="per_direction", directions=5),
     "eigen: directions=5 is out of range for box 'mlp': it must be an integer from 1 to 4"),
    (lambda m: eigen(m, "mlp", mode="threshold", threshold=1e9),
     "eigen: threshold=1000000000.0 keeps no eigencomponent of box 'mlp'"),
    (lambda m: eigen(m,
     "mlp", k=1, mode="sideways"), "eigen: mode='sideways' is not one of per_output, per_direction, threshold"),
    (lambda m: eigen(m,
     "mlp", k=1, fold=("glu",)), "eigen: cannot fold 'glu' into box 'mlp': fold takes a Linear or Unembed box"),
    (lambda m: lowrank(m,
     "mlp", 1), "lowrank: box 'mlp' is a Bilinear box (x:4 -> x:4); lowrank rewrites Linear, Unembed and Embed boxes"),
    (lambda m: lowrank(m,
     "out", 4), "lowrank: rank=4 is out of range for box 'out': it must be an integer from 1 to 3"),
    (lambda m: lowrank(m, "out", 1.5), "lowrank: rank=1.5 is out of range for box 'out'"),
    (lambda m: cp(m, "glu", 1), "cp: box 'glu' is a Gated box (x:4 -> x:4); cp rewrites Bilinear boxes"),
    (lambda m: cp(m, "mlp", 0), "cp: rank=0 is out of range for box 'mlp'"),
    (lambda m: prune(m,
     "out", 1), "prune: box 'out' is an Unembed box (x:4 -> y:3); prune rewrites Bilinear, Gated and Attention boxes"),
    (lambda m: prune(m, "glu", 3), "prune: keep=3 is out of range for box 'glu': it must be an integer from 0 to 2"),
    (lambda m: prune(m, "mlp", 0), "prune: keep=0 would leave box 'mlp' adding its constant output bias"),
    (lambda m: odt(m, ["embed", "out"], 2), "odt: boxes 'embed', 'out' are not a chain"),
    (lambda m: odt(m, ["mlp"], 2), "odt: boxes=['mlp'] must name a chain of at least two boxes"),
    (lambda m: odt(m, ["mlp", "nope"], 2), "odt: the model has no box named 'nope'"),
    (lambda m: odt(m, ["copy",
     "mlp"], 2), "odt: box 'copy' is a Copy box; a chain is made of Linear, Unembed, Bilinear and Gated boxes"),
    (lambda m: fuse("not a model"), "fuse rewrites a compinterp Model, got str"),
    (lambda m: Eigen().apply(m, Rewrite("lowrank",
     "mlp", {"rank": 1})), "the eigen pass cannot apply a 'lowrank' rewrite (lowrank(mlp, rank=1))"),
])
def test_bad_input_names_the_box_and_setting(model: Model, call, message: str) -> None:
    with pytest.raises(CompinterpError) as err:
        call(model)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text, text


def test_folding_an_embedding_into_a_bilinear_box_is_refused() -> None:
    tok, x = Space("tok", 7), Space("x", 4)
    model = Model(chain(Embed("emb", tok, x), residual(Bilinear("mlp", x, x, hidden=3))), seed=0)
    message = r"^eigen: cannot fold 'emb' into box 'mlp': it is an Embed box \(its inputs are token ids"
    with pytest.raises(BoxError, match=message):
        eigen(model, "mlp", k=1, fold=("emb",))


def test_odt_k_out_of_range_names_the_chain() -> None:
    model = Model(chain(Bilinear("a", x, Space("z", 5), hidden=3), Bilinear("b", Space("z", 5), y, hidden=2)), seed=0)
    with pytest.raises(BoxError, match=r"^odt: k=0 is out of range for box 'a': it must be an integer from 1 to 5$"):
        odt(model, ["a", "b"], 0)


def test_removing_the_only_summand_is_refused() -> None:
    model = Model(Attention("attn", x, heads=2), seed=0)
    with pytest.raises(BoxError, match=r"^box 'attn' would be left with nothing to compute"):
        prune(model, "attn", 0)
    assert torch.isfinite(prune(model, "attn", 1)(torch.randn(3, 4))).all()
