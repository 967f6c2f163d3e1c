"""Drawing diagrams to PNG and SVG: valid files, labelled wires and boxes, no windows, clean failures."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from torch import nn

from compinterp.drawing import draw, label
from compinterp.errors import BoxError, FormatError
from compinterp.model import Model
from compinterp.syntax import (
    Attention, Bilinear, Diagram, Elementwise, Embed, Id, Linear, Norm, Opaque, Space, Swap, Unembed, chain,
    residual,
)

SVG = "{http://www.w3.org/2000/svg}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def transformer(layers: int) -> Diagram:
    """Embed, then ``layers`` of (norm, attention) and (norm, bilinear MLP) residual blocks, then unembed."""
    r = Space("resid", 64)
    parts = [Embed("embed", Space("tokens", 100), r)]
    for i in range(layers):
        parts.append(residual(Norm(f"ln{i}a", r) >> Attention(f"attn{i}", r, heads=4)))
        parts.append(residual(Norm(f"ln{i}b", r) >> Bilinear(f"mlp{i}", r, r, hidden=256)))
    return chain(*parts, Norm("ln_f", r), Unembed("unembed", r, Space("logits", 100)))


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return ["".join(node.itertext()) for node in root.iter(f"{SVG}text")]


def test_svg_has_wire_labels_and_box_names(tmp_path: Path) -> None:
    diagram = transformer(3)
    assert len(diagram.inside) == 27
    path = draw(diagram, tmp_path / "t.svg")
    texts = svg_texts(path)
    assert texts.count("resid:64") >= 27 and {"tokens:100", "logits:100"} <= set(texts)
    names = {box.name for box in diagram.boxes}
    shown = {line for text in texts for line in text.splitlines()}
    assert names <= shown
    assert {"Attention", "Bilinear", "Norm"} <= shown
    assert not {"Copy", "Add", "Embed", "Unembed"} & shown   # no kind where the name already says it
    assert plt.get_fignums() == []                       # pyplot never touched: no figure, no window


def test_png_is_valid_and_grows_with_the_diagram(tmp_path: Path) -> None:
    small = png_size(draw(transformer(1), tmp_path / "small.png"))
    large = png_size(draw(transformer(3), tmp_path / "large.png"))
    assert large[1] > 2 * small[1] and large[0] == small[0]
    assert large[1] >= 27 * 0.75 * 100                   # at least 0.75 inch per layer at 100 dpi
    wide = png_size(draw(Linear("f", Space("x", 2), Space("x", 2)) @ Id(Space("x", 2) @ Space("y", 3)),
                         tmp_path / "wide.png"))
    assert wide[0] > small[0]


def test_models_swaps_opaque_and_identities_draw(tmp_path: Path) -> None:
    x, y = Space("x", 2), Space("y", 3)
    model = Model((Linear("f", x, x) @ Opaque("op", y, y, module=nn.Tanh()))
                  >> Swap(x, y) >> Elementwise("relu", y, name="act") @ Id(x))
    texts = svg_texts(model.draw(tmp_path / "m.svg"))
    assert {"x:2", "y:3", "f", "Linear", "op", "Opaque", "act", "relu"} <= set(texts)
    assert svg_texts(draw(Id(x), tmp_path / "id.svg")) == ["x:2"]
    png_size(draw(Id(), tmp_path / "empty.png"))


def test_options(tmp_path: Path) -> None:
    x = Space("x", 2)
    diagram = Linear("f", x, x) >> Norm("ln", x)
    assert set(svg_texts(draw(diagram, tmp_path / "a.svg", kinds=False, wire_labels=False))) == {"f", "ln"}
    assert png_size(draw(diagram, tmp_path / "b.png", figsize=(3, 2), dpi=50)) == (150, 100)
    assert label(Elementwise("gelu", x)) == "gelu" and label(Linear("Linear", x, x)) == "Linear"


def test_bad_suffix_and_missing_directory(tmp_path: Path) -> None:
    x = Space("x", 2)
    with pytest.raises(FormatError, match=r"cannot draw to .*model.pdf: the file name must end in .png or .svg, "
                                          r"not '.pdf'"):
        draw(Linear("f", x, x), tmp_path / "model.pdf")
    with pytest.raises(FormatError, match=r"not 'nothing'"):
        draw(Linear("f", x, x), tmp_path / "model")
    with pytest.raises(FormatError, match=r"the directory .*nope does not exist"):
        draw(Linear("f", x, x), tmp_path / "nope" / "model.png")
    with pytest.raises(BoxError, match="draw\\(\\) takes a compinterp Diagram or Model, got str"):
        draw("f", tmp_path / "model.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_picture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = Space("x", 2)
    path = draw(Linear("f", x, x), tmp_path / "d.svg")
    before = path.read_bytes()

    def crash(self: object, name: Path, **kwargs: object) -> None:
        Path(name).write_text("<svg")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", crash)
    with pytest.raises(FormatError, match=r"cannot draw to .*d.svg: No space left on device"):
        draw(Linear("g", x, x), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.svg"]
