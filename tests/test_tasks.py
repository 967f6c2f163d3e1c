"""Tasks: the data each one ships is what it says (splits, labels, formats), and each declares its models."""

from __future__ import annotations

import itertools
import operator

import pytest
import torch

from compinterp.errors import InputError
from compinterp.model import Model
from compinterp.tasks import data_from_spec, digits, gates, modular
from compinterp.tasks.task import Recipe, Task
from compinterp.tasks.train import TASKS, get_task


def test_digits_split_is_fixed_and_disjoint() -> None:
    from sklearn.datasets import load_digits

    x, y = digits.load("train")
    xt, yt = digits.load("test")
    assert len(x) + len(xt) == 1797 and len(xt) == int(1797 * 0.2)
    assert torch.equal(digits.load("test")[0], xt)
    whole = torch.tensor(load_digits().data, dtype=torch.float32) / 16
    rows = {tuple(r.tolist()) for r in whole}
    assert {tuple(r.tolist()) for r in x} <= rows and float(x.max()) == 1.0 and float(x.min()) == 0.0
    source = data_from_spec("digits")
    batch = next(iter(source.batches(1000, (64,))))
    assert torch.equal(batch[0], xt) and torch.equal(batch[1], yt)


def test_modular_covers_every_pair_once() -> None:
    p = 13
    a, b, y = modular.load("train", p=p, train_fraction=0.3)
    at, bt, yt = modular.load("test", p=p, train_fraction=0.3)
    seen = sorted(zip(torch.cat([a, at]).tolist(), torch.cat([b, bt]).tolist()))
    assert seen == list(itertools.product(range(p), range(p)))
    assert len(a) == int(p * p * 0.3)
    assert all((i + j) % p == k for i, j, k in zip(torch.cat([a, at]).tolist(), torch.cat([b, bt]).tolist(),
                                                     torch.cat([y, yt]).tolist()))
    real = modular.load("train")
    assert len(real[0]) == int(113 * 113 * 0.4) and int(real[0].max()) == 112


def test_modular_sequences_are_labelled_at_the_end() -> None:
    tokens, positions, labels = modular.load("train", p=7, sequence=True)
    a, b, y = modular.load("train", p=7)
    assert torch.equal(tokens[:, 0], a) and torch.equal(tokens[:, 1], b) and bool((tokens[:, 2] == 7).all())
    assert torch.equal(labels[:, 2], y) and bool((labels[:, :2] == modular.IGNORE).all())
    assert torch.equal(positions[5], torch.tensor([0, 1, 2]))
    with pytest.raises(InputError, match="train_fraction must lie strictly between 0 and 1, got 1.5"):
        modular.load("train", train_fraction=1.5)


def test_gates_match_a_truth_table() -> None:
    x, y = gates.load("train", n=2000, noise=0.0)
    bits = ((x + 1) / 2).round().long()
    table = {"and": operator.and_, "or": operator.or_, "xor": operator.xor}
    for row, out in zip(bits.tolist(), y.tolist()):
        assert out == [float(table[op](row[i], row[j])) for op, i, j in gates.GATES]
    noisy, _ = gates.load("train", n=20000, noise=0.3)
    residual = noisy - noisy.sign()
    assert abs(residual.std().item() - 0.3) < 0.01
    assert not torch.equal(gates.load("train", n=50)[0], gates.load("test", n=50)[0])


def test_a_quadratic_computes_xor_exactly() -> None:
    """On ±1 inputs XOR(x, y) = (1 - x y) / 2: one bilinear unit with biases."""
    from compinterp.syntax import Bilinear, Space
    box = Bilinear("xor", Space("bits", 2), Space("gate", 1), hidden=2, bias=True)
    params = {"L": torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "R": torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
              "l": torch.tensor([0.0, 1.0]), "r": torch.tensor([0.0, 1.0]),
              "D": torch.tensor([[-0.5, 0.5]]), "d": torch.tensor([0.0])}
    model = Model(box, {"xor": params})
    bits = torch.tensor(list(itertools.product([0, 1], repeat=2)))
    assert torch.equal(model(2.0 * bits - 1).flatten(), (bits[:, 0] ^ bits[:, 1]).float())


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_model_of_every_task_reads_its_data(name: str) -> None:
    task = get_task(name) if name != "modular" else modular.task(p=7)
    for model_name in task.models:
        model = Model(task.build(model_name), seed=0)
        *xs, labels = (t[:5] for t in task.data("test", model_name))
        out = model(*xs)
        assert out.shape[:labels.dim()] == labels.shape
        assert out.shape[-1] == model.cod.dims[0]


def test_task_errors_are_one_line() -> None:
    with pytest.raises(InputError, match="unknown task 'mnist'; the tasks are digits, modular, gates"):
        get_task("mnist")
    with pytest.raises(InputError, match="task 'digits' has no model 'transformer'; its models: mlp, chi"):
        get_task("digits").build("transformer")
    with pytest.raises(InputError, match="task 'gates': split must be 'train' or 'test', got 'val'"):
        get_task("gates").data("val")


def test_a_task_with_an_unknown_loss_or_no_models_is_refused() -> None:
    build = digits.task().models["mlp"][0]
    with pytest.raises(InputError, match="task 'toy': unknown loss 'hinge'; the losses are cross_entropy, binary"):
        Task("toy", "a toy", {"mlp": (build, Recipe(epochs=1, lr=1e-3))}, lambda split, model: (), loss="hinge")
    with pytest.raises(InputError, match="task 'toy' has no models"):
        Task("toy", "a toy", {}, lambda split, model: ())
