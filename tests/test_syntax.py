"""The syntax: spaces, box kinds, type-checked composition, residual/chain, box JSON."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from support import assert_error

from compinterp.errors import BoxError, CompinterpError, CompositionError
from compinterp.syntax import (
    KINDS,
    Add,
    Attention,
    Bilinear,
    Box,
    ChannelAffine,
    Conv,
    Copy,
    Diagram,
    Elementwise,
    Flatten,
    Embed,
    Gated,
    Id,
    JumpReLU,
    Linear,
    Mul,
    Norm,
    Opaque,
    Pool,
    PosEmbed,
    Space,
    Swap,
    TopK,
    Unembed,
    Wire,
    box_from_json,
    box_to_json,
    chain,
    describe,
    residual,
)

X, Y, Z = Space("x", 3), Space("y", 2), Space("z", 4)
RESID, HIDDEN = Space("resid", 64), Space("hidden", 256)


def raises(error: type[Exception], *fragments: str) -> Callable[[Callable[[], object]], str]:
    """``raises(error, *fragments)(make)``: :func:`support.assert_error` with ``make`` last."""
    return lambda make: assert_error(error, make, *fragments)


# --- spaces and wires ----------------------------------------------------------------------------

def test_space_from_label_and_dim_equals_space_from_text() -> None:
    assert Space("resid", 64) == Space("resid:64") == Space(Wire("resid", 64))
    assert Space("resid", 64) != Space("resid", 65)
    assert Space("resid", 64) != Space("other", 64)


def test_space_product_has_wires_and_dims_in_order() -> None:
    space = X @ Y @ Z
    assert space.dims == (3, 2, 4)
    assert [w.name for w in space.wires] == ["x:3", "y:2", "z:4"]
    assert [w.label for w in space.wires] == ["x", "y", "z"]
    assert list(space) == [X, Y, Z]
    assert len(space) == 3
    assert str(space) == "x:3 @ y:2 @ z:4"
    assert Space("a:1", "b:2") == Space("a", 1) @ Space("b", 2)


def test_empty_space() -> None:
    assert len(Space()) == 0
    assert Space().dims == ()
    assert str(Space()) == "()"


def test_space_json_round_trip() -> None:
    space = X @ Y @ X
    text = json.dumps(space.to_json())
    assert json.loads(text) == ["x:3", "y:2", "x:3"]
    assert Space.from_json(json.loads(text)) == space


def test_wire_name_and_repr() -> None:
    wire = Wire("logits", 10)
    assert (wire.name, wire.label, wire.dim) == ("logits:10", "logits", 10)
    assert repr(wire) == "Wire('logits', 10)"
    assert Wire("logits:10") == wire


def test_dim_of_one_wire_space() -> None:
    assert Space("x", 7).dim == 7
    raises(BoxError, "x:3 @ y:2", "2 wires", ".dim")(lambda: (X @ Y).dim)


@pytest.mark.parametrize(("text", "fragments"), [
    ("resid", ("'resid'", "label:dim")),
    ("a:b:c", ("'a:b:c'", "label:dim")),
    ("resid:x", ("'resid:x'", "'x' is not an integer")),
    ("1a:3", ("'1a'", "label")),
    ("a b:3", ("'a b'", "label")),
    ("a:0", ("'a'", "positive integer", "0")),
    ("a:-1", ("'a'", "positive integer", "-1")),
])
def test_bad_wire_text(text: str, fragments: tuple[str, ...]) -> None:
    raises(BoxError, *fragments)(lambda: Space(text))


@pytest.mark.parametrize("dim", [0, -2, True, 2.5, "3"])
def test_bad_wire_dimension(dim: object) -> None:
    raises(BoxError, "'a'", "positive integer", repr(dim))(lambda: Wire("a", dim))  # type: ignore[arg-type]


def test_errors_are_compinterp_errors_and_builtin_kinds() -> None:
    assert issubclass(BoxError, CompinterpError) and issubclass(BoxError, ValueError)
    assert issubclass(CompositionError, CompinterpError) and issubclass(CompositionError, TypeError)


# --- box constructors ----------------------------------------------------------------------------

def test_param_shapes_of_each_kind() -> None:
    assert Embed("emb", Space("tok", 5), X).param_shapes() == {"W": (5, 3)}
    assert Linear("f", X, Y).param_shapes() == {"W": (2, 3)}
    assert Linear("f", X, Y, bias=True).param_shapes() == {"W": (2, 3), "b": (2,)}
    assert Unembed("u", X, Y, bias=True).param_shapes() == {"W": (2, 3), "b": (2,)}
    assert Bilinear("b", X, Y, hidden=5).param_shapes() == {"L": (5, 3), "R": (5, 3), "D": (2, 5)}
    assert Bilinear("b", X, Y, hidden=5, bias=True).param_shapes() == {
        "L": (5, 3), "R": (5, 3), "D": (2, 5), "l": (5,), "r": (5,), "d": (2,)}
    assert Gated("g", X, Y, hidden=5).param_shapes() == {"L": (5, 3), "R": (5, 3), "D": (2, 5)}
    assert Norm("n", Z).param_shapes() == {"weight": (4,)}
    assert Norm("n", Z, norm="layer").param_shapes() == {"weight": (4,), "bias": (4,)}
    assert Norm("n", Z, norm="layer", affine=False).param_shapes() == {}
    assert Norm("n", Z, affine=False).param_shapes() == {}
    assert Attention("a", Z, heads=2).param_shapes() == {"Wq": (4, 4), "Wk": (4, 4), "Wv": (4, 4), "Wo": (4, 4)}
    assert Attention("a", Z, heads=3, head_dim=5, bias=True).param_shapes() == {
        "Wq": (15, 4), "Wk": (15, 4), "Wv": (15, 4), "Wo": (4, 15),
        "bq": (15,), "bk": (15,), "bv": (15,), "bo": (4,)}
    for box in (Elementwise("relu", X), Copy(X), Add(X, 3), Mul(X), Opaque("o", X, Y)):
        assert box.param_shapes() == {}


def test_spiders_have_the_right_spaces() -> None:
    assert (Copy(X, 3).dom, Copy(X, 3).cod) == (X, X @ X @ X)
    assert (Copy(X, 0).dom, Copy(X, 0).cod) == (X, Space())
    assert (Add(X, 3).dom, Add(X, 3).cod) == (X @ X @ X, X)
    assert (Add(X, 0).dom, Add(X, 0).cod) == (Space(), X)
    assert (Mul(Y, 2).dom, Mul(Y, 2).cod) == (Y @ Y, Y)
    assert Elementwise("tanh", X @ Y).dom == Elementwise("tanh", X @ Y).cod == X @ Y
    assert Elementwise("tanh", X).name == "tanh"
    assert Elementwise("tanh", X, name="act").name == "act"


def test_polynomial_flags() -> None:
    assert Linear("f", X, Y).polynomial and Bilinear("b", X, X, hidden=2).polynomial
    assert Embed("e", X, Y).polynomial and Copy(X).polynomial and Add(X).polynomial and Mul(X).polynomial
    assert not Gated("g", X, X, hidden=2).polynomial
    assert not Norm("n", X).polynomial and not Attention("a", Z, heads=2).polynomial
    assert Elementwise("square", X).polynomial and Elementwise("neg", X).polynomial
    assert not Elementwise("relu", X).polynomial


@pytest.mark.parametrize(("make", "fragments"), [
    (lambda: Linear("a.b", X, Y), ("Linear", "'a.b'", "no '.'")),
    (lambda: Linear("", X, Y), ("Linear", "''")),
    (lambda: Linear(3, X, Y), ("Linear", "3")),
    (lambda: Linear("up", X @ Y, Z), ("Linear box 'up'", "input", "x:3 @ y:2", "2 wires")),
    (lambda: Linear("up", X, Y @ Z), ("Linear box 'up'", "output", "y:2 @ z:4")),
    (lambda: Linear("up", "x:3", Y), ("Linear box 'up'", "input must be a Space", "'x:3'")),
    (lambda: Linear("up", X, Space()), ("Linear box 'up'", "output", "0 wires")),
    (lambda: Unembed("head", X @ X, Y), ("Unembed box 'head'", "input")),
    (lambda: Embed("emb", X @ Y, Z), ("Embed box 'emb'", "input", "2 wires")),
    (lambda: Embed("emb", X, 4), ("Embed box 'emb'", "output must be a Space", "4")),
    (lambda: Embed("e mb", X, Z), ("Embed", "'e mb'")),
    (lambda: Bilinear("mlp", X, X, hidden=0), ("Bilinear box 'mlp'", "hidden", "0")),
    (lambda: Bilinear("mlp", X, X, hidden=True), ("Bilinear box 'mlp'", "hidden", "True")),
    (lambda: Bilinear("mlp", X, X, hidden=2.0), ("Bilinear box 'mlp'", "hidden", "2.0")),
    (lambda: Bilinear("mlp", X @ X, X, hidden=2), ("Bilinear box 'mlp'", "input")),
    (lambda: Gated("glu", X, X, hidden=2, activation="swish"), ("Gated box 'glu'", "'swish'", "silu")),
    (lambda: Gated("glu", X, X, hidden=-1), ("Gated box 'glu'", "hidden", "-1")),
    (lambda: Norm("ln", X, norm="batch"), ("Norm box 'ln'", "'batch'", "rms")),
    (lambda: Norm("ln", X, norm="layer", eps=None), ("Norm box 'ln'", "layer norm", "eps")),
    (lambda: Norm("ln", X, affine=False, bias=True), ("Norm box 'ln'", "bias", "affine")),
    (lambda: Norm("ln", X @ Y), ("Norm box 'ln'", "space", "2 wires")),
    (lambda: Elementwise("swish", X), ("Elementwise", "'swish'", "relu")),
    (lambda: Elementwise("relu", "x:3"), ("Elementwise box 'relu'", "Space", "'x:3'")),
    (lambda: Elementwise("relu", X, name="1act"), ("Elementwise", "'1act'")),
    (lambda: Copy(X, -1), ("Copy box 'copy'", "n", "-1")),
    (lambda: Copy(X, True, name="dup"), ("Copy box 'dup'", "n", "True")),
    (lambda: Copy(X @ Y), ("Copy box 'copy'", "one wire", "x:3 @ y:2")),
    (lambda: Copy(X, name="a.b"), ("Copy", "'a.b'")),
    (lambda: Add(X, 1.5), ("Add box 'add'", "n", "1.5")),
    (lambda: Add(X @ Y), ("Add box 'add'", "one wire")),
    (lambda: Mul(X, 0, name="prod"), ("Mul box 'prod'", "n", "0")),
    (lambda: Mul(Y @ Y), ("Mul box 'mul'", "one wire")),
    (lambda: Attention("attn", Space("r", 5), heads=2), ("Attention box 'attn'", "r:5", "2 heads", "head_dim")),
    (lambda: Attention("attn", Z, heads=0), ("Attention box 'attn'", "heads", "0")),
    (lambda: Attention("attn", Z, heads=2, head_dim=0), ("Attention box 'attn'", "head_dim", "0")),
    (lambda: Attention("attn", Z @ Z, heads=2), ("Attention box 'attn'", "space", "2 wires")),
    (lambda: Opaque("blob", X, "y"), ("Opaque box 'blob'", "output must be a Space", "'y'")),
    (lambda: Opaque("blob", None, Y), ("Opaque box 'blob'", "input must be a Space")),
    (lambda: Opaque("bl.ob", X, Y), ("Opaque", "'bl.ob'")),
])
def test_box_constructor_errors_name_the_box(make: Callable[[], object], fragments: tuple[str, ...]) -> None:
    raises(BoxError, *fragments)(make)


def test_box_holds_no_tensors_and_compares_by_value() -> None:
    a, b = Bilinear("mlp", X, X, hidden=4), Bilinear("mlp", X, X, hidden=4)
    assert a == b and {a: 1}[b] == 1
    assert a != Bilinear("mlp", X, X, hidden=5)
    assert a != Bilinear("mlp", X, X, hidden=4, bias=True)
    assert repr(a) == "Bilinear('mlp', x:3 -> x:3)"
    json.dumps(a.data)


def test_opaque_keeps_its_module_outside_the_data() -> None:
    module = torch.nn.Linear(3, 2)
    box = Opaque("blob", X, Y, module=module)
    assert box.module is module
    assert box.data == {"description": "Linear"}
    assert Opaque("blob", X, Y, description="my net").data == {"description": "my net"}


# --- composition ---------------------------------------------------------------------------------

def test_sequential_and_parallel_composition_types() -> None:
    f, g = Linear("f", X, Y), Linear("g", Y, Z)
    assert (f >> g).dom == X and (f >> g).cod == Z
    assert (f @ g).dom == X @ Y and (f @ g).cod == Y @ Z
    assert isinstance(f >> g, Diagram) and isinstance(f @ g, Diagram)
    assert [box.name for box in (f >> g).boxes] == ["f", "g"]


def test_composition_mismatch_names_both_boxes_and_both_spaces() -> None:
    up, down = Linear("up", RESID, HIDDEN), Linear("down", Space("hidden", 128), RESID)
    message = raises(CompositionError, "up (resid:64 -> hidden:256)", "down (hidden:128 -> resid:64)",
                     "box 'up'", "box 'down'", "hidden:256", "hidden:128")(lambda: up >> down)
    assert message.index("hidden:256") < message.index("hidden:128")


def test_composition_mismatch_deep_inside_diagrams_names_the_boxes_at_the_seam() -> None:
    left = Linear("a", X, Y) >> Linear("b", Y, Z) >> Linear("c", Z, X)
    right = Linear("d", Y, X) >> Linear("e", X, X)
    raises(CompositionError, "output 0 is x:3", "box 'c' (z:4 -> x:3)", "needs y:2", "box 'd' (y:2 -> x:3)",
           "diagram [a, b, c]", "diagram [d, e]")(lambda: left >> right)


def test_composition_mismatch_on_a_second_wire_through_identities() -> None:
    left, right = Linear("a", X, Y) @ Id(X), Linear("b", Y, X) @ Id(Y)
    raises(CompositionError, "output 1 is x:3", "identity wire from the diagram's input", "needs y:2",
           "identity wire from the diagram's output")(lambda: left >> right)


def test_composition_mismatch_through_a_swap_names_the_box_that_made_the_wire() -> None:
    left = (Linear("a", X, Y) @ Linear("b", X, Z)) >> Swap(Y, Z)
    right = Linear("c", Y, X) @ Id(Y)
    raises(CompositionError, "output 0 is z:4", "box 'b' (x:3 -> z:4)", "needs y:2",
           "box 'c' (y:2 -> x:3)")(lambda: left >> right)


@pytest.mark.parametrize(("left", "right", "counts"), [
    (Linear("a", X, Y), Linear("b", Y, X) @ Id(X), ("gives 1 wires (y:2)", "takes 2 (y:2 @ x:3)")),
    (Linear("a", X, Y) @ Id(X), Linear("b", Y, X), ("gives 2 wires (y:2 @ x:3)", "takes 1 (y:2)")),
    (Copy(X, 0), Linear("b", X, Y), ("gives 0 wires", "takes 1 (x:3)")),
])
def test_wrong_wire_count_is_reported(left: Diagram, right: Diagram, counts: tuple[str, ...]) -> None:
    raises(CompositionError, "cannot compose", *counts)(lambda: left >> right)


def test_identity_mismatch_and_non_diagrams_are_reported() -> None:
    raises(CompositionError, "identity on x:3", "b (y:2 -> x:3)")(lambda: Id(X) >> Linear("b", Y, X))
    raises(CompositionError, "a (x:3 -> y:2)", "3", "not a compinterp diagram")(lambda: Linear("a", X, Y) >> 3)
    raises(CompositionError, "a (x:3 -> y:2)", "not a compinterp diagram")(
        lambda: Linear("a", X, Y).tensor("not a diagram"))


def test_boxes_have_no_dagger() -> None:
    raises(CompositionError, "a (x:3 -> y:2)", "dagger")(lambda: Linear("a", X, Y).dagger())


def test_walk_yields_offsets_in_layer_order() -> None:
    f, g, h = Linear("f", X, Y), Linear("g", Y, Z), Linear("h", Z, Z)
    diagram = (f @ Id(Z)) >> (g @ h) >> Swap(Z, Z)
    walked = list(diagram.walk())
    assert [(offset, box.name) for offset, box in walked[:3]] == [(0, "f"), (0, "g"), (1, "h")]
    assert walked[3] == (0, Swap(Z, Z))


def test_describe() -> None:
    assert describe(Linear("f", X, Y)) == "f (x:3 -> y:2)"
    assert describe(Id(X)) == "identity on x:3"
    assert describe(chain(*[Linear(f"f{i}", X, X) for i in range(6)])) == \
        "diagram [f0, f1, f2, f3, ...] (x:3 -> x:3)"


# --- swaps ---------------------------------------------------------------------------------------

def test_swap_of_two_wires() -> None:
    swap = Swap(X, Y)
    assert (swap.dom, swap.cod) == (X @ Y, Y @ X)
    assert swap.dagger() == Swap(Y, X)
    assert (swap >> swap.dagger()).cod == X @ Y


def test_swap_of_several_wires_is_made_of_atomic_swaps() -> None:
    swap = Diagram.swap(X @ Y, Z @ X)
    assert (swap.dom, swap.cod) == (X @ Y @ Z @ X, Z @ X @ X @ Y)
    assert all(isinstance(box, Swap) for _, box in swap.walk())
    assert len(list(swap.walk())) == 4
    assert (swap >> Diagram.swap(Z @ X, X @ Y)).cod == X @ Y @ Z @ X


def test_swap_needs_one_wire_each_side() -> None:
    raises(CompositionError, "Swap(x:3 @ y:2, z:4)", "one wire", "Diagram.swap")(lambda: Swap(X @ Y, Z))


# --- residual and chain --------------------------------------------------------------------------

def test_residual_wraps_a_block_in_copy_and_add() -> None:
    block = Bilinear("mlp", X, X, hidden=4)
    diagram = residual(block)
    assert (diagram.dom, diagram.cod) == (X, X)
    assert [box.kind for box in diagram.boxes] == ["Copy", "Bilinear", "Add"]
    assert diagram == Copy(X) >> (block @ Id(X)) >> Add(X)


def test_residual_of_a_diagram() -> None:
    block = Norm("ln", X) >> Linear("f", X, X)
    assert [box.name for box in residual(block).boxes] == ["copy", "ln", "f", "add"]


@pytest.mark.parametrize("block", [Linear("f", X, Y), Id(X @ X), Copy(X)])
def test_residual_needs_a_one_wire_endomorphism(block: Diagram) -> None:
    raises(BoxError, "residual()", str(block.dom), str(block.cod))(lambda: residual(block))


def test_chain_equals_repeated_composition() -> None:
    boxes = [Linear("a", X, Y), Bilinear("b", Y, Z, hidden=2), Norm("n", Z), Linear("c", Z, X)]
    assert chain(*boxes) == boxes[0] >> boxes[1] >> boxes[2] >> boxes[3]
    assert chain(boxes[0]) == boxes[0]


def test_chain_errors() -> None:
    raises(BoxError, "chain()", "at least one")(lambda: chain())
    raises(CompositionError, "a (x:3 -> y:2)", "c (z:4 -> x:3)", "y:2", "z:4")(
        lambda: chain(Linear("a", X, Y), Linear("c", Z, X)))


# --- box JSON ------------------------------------------------------------------------------------

EVERY_BOX: list[Box] = [
    Embed("emb", Space("tok", 5), X),
    Linear("lin", X, Y), Linear("lin_b", X, Y, bias=True),
    Unembed("head", X, Space("logits", 10), bias=True),
    Bilinear("bil", X, Y, hidden=5), Bilinear("bil_b", X, X, hidden=2, bias=True),
    Gated("glu", X, Y, hidden=5, activation="gelu", bias=True),
    Norm("rms", X, eps=None), Norm("ln", X, norm="layer", eps=1e-6), Norm("ln0", X, norm="layer", affine=False),
    Elementwise("relu", X @ Y), Elementwise("square", X, name="sq"),
    TopK("top", Y, 2), TopK("top_abs", Y, 1, absolute=True), JumpReLU("jump", Y),
    Copy(X, 3), Copy(X, 0, name="drop"), Add(Y, 2), Add(Y, 0, name="zero"), Mul(Z, 3),
    Attention("attn", Z, heads=2, causal=False, bias=True), Attention("attn2", Z, heads=3, head_dim=5),
    Attention("gqa", Z, heads=4, head_dim=2, kv_heads=2, rotary_dim=2, rotary_base=500.0, scale=0.3, window=3,
              bias="qkv"),
    PosEmbed("pos", X, positions=7),
    Conv("conv", Y, Space("y", 1), in_channels=2, out_channels=4, kernel=[3, 3], stride=2, padding=1, groups=2,
         bias=True),
    ChannelAffine("bn", X, channels=5, spatial=2),
    Pool("pool", Y, Space("y", 1), mode="max", kernel=3, stride=2, padding=1),
    Flatten("flat", Y, Z, shape=[2, 2]),
    Opaque("blob", X @ Y, Z, module=torch.nn.Identity()),
    Swap(X, Y),
]


def test_every_kind_is_covered_by_the_json_cases() -> None:
    assert {box.kind for box in EVERY_BOX} == set(KINDS) | {"Swap"}
    assert all(KINDS[kind].kind == kind for kind in KINDS)


@pytest.mark.parametrize("box", EVERY_BOX, ids=lambda box: f"{box.kind}-{box.name}")
def test_box_json_round_trip(box: Box) -> None:
    entry = json.loads(json.dumps(box_to_json(box)))
    back = box_from_json(entry)
    assert back == box
    assert type(back) is type(box)
    assert (back.kind, back.name, back.dom, back.cod, back.data) == (box.kind, box.name, box.dom, box.cod, box.data)
    if box.kind != "Swap":
        assert back.param_shapes() == box.param_shapes()
        assert back.polynomial == box.polynomial
        assert entry == box.to_json()
    if box.kind == "Opaque":
        assert back.module is None


def test_box_json_of_a_diagram_round_trips_its_boxes() -> None:
    diagram = residual(Bilinear("mlp", X, X, hidden=4)) >> Linear("out", X, Y)
    layers = [Id(left) @ box_from_json(json.loads(json.dumps(box_to_json(box)))) @ Id(right)
              for left, box, right in diagram.inside]
    assert Id(diagram.dom).then(*layers) == diagram


def test_box_from_json_unknown_kind() -> None:
    raises(BoxError, "'Conv4d'", "'c1'", "Linear")(
        lambda: box_from_json({"kind": "Conv4d", "name": "c1", "dom": ["x:3"], "cod": ["x:3"], "data": {}}))
