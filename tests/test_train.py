"""Training: real models reach their accuracy, runs are deterministic, and ``compinterp train`` saves them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import compinterp as ci
from compinterp.cli import TASK_NAMES, main
from compinterp.errors import InputError
from compinterp.tasks import digits, gates, modular
from compinterp.tasks.task import Recipe
from compinterp.tasks.train import TASKS, evaluate, noised, read_run, train


def test_cli_trains_digits_and_saves_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits"
    assert main(["train", "digits", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    run = read_run(out)
    assert printed == run | {"out": str(out)}
    assert run["test_accuracy"] >= 0.95 and run["task"] == "digits" and run["model"] == "mlp"
    # the saved model scores what the run says, recomputed by hand on the held-out split
    model = ci.load(out)
    x, y = digits.load("test")
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == y).sum().item() / len(y)
    assert accuracy == pytest.approx(run["test_accuracy"], abs=1e-9)
    assert run["parameters"] == model.num_params() == 3 * 64 * 64 + 10 * 64


def test_runs_are_deterministic_for_a_seed() -> None:
    first, again = (train("gates", seed=4, epochs=5, progress=False) for _ in range(2))
    other = train("gates", seed=5, epochs=5, progress=False)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    assert any(not torch.equal(v, other.model.state_dict()[k]) for k, v in first.model.state_dict().items())
    assert first.to_json() | {"seconds": 0} == again.to_json() | {"seconds": 0}


def test_gates_are_learned_and_scored_like_a_hand_count() -> None:
    run = train("gates", epochs=20, progress=False)
    x, y = gates.load("test")
    with torch.no_grad():
        logits = run.model(x)
    by_hand = ((logits > 0).float() == y).float().mean().item()
    assert run.test_accuracy == pytest.approx(by_hand) and by_hand > 0.98
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y).item()
    assert evaluate(run.model, "binary", (x, y))[0] == pytest.approx(bce, rel=1e-5)


def test_modular_addition_generalises_from_a_fraction_of_the_table() -> None:
    task = modular.task(p=41, train_fraction=0.5, width=32, hidden=32)
    run = train(task, epochs=600, progress=False)
    assert run.train_accuracy == 1.0 and run.test_accuracy > 0.9
    assert run.options == {"p": 41, "train_fraction": 0.5, "width": 32, "hidden": 32}


def test_the_transformer_fits_its_training_split() -> None:
    task = modular.task(p=7, train_fraction=0.6, width=16, hidden=16)
    run = train(task, model="transformer", epochs=300, progress=False,
                recipe=Recipe(epochs=300, lr=1e-2, weight_decay=0.0))
    assert run.train_accuracy == 1.0 and run.model_name == "transformer"
    tokens, positions, labels = task.data("train", "transformer")
    with torch.no_grad():
        guess = run.model(tokens, positions)[:, -1].argmax(-1)
    assert torch.equal(guess, labels[:, -1])


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert set(TASK_NAMES) == set(TASKS)
    assert main(["train", "mnist", "--out", str(tmp_path)]) == 2
    assert "invalid choice: 'mnist'" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["train", "gates", "--out", str(tmp_path / "file"), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("compinterp: error: cannot save a model to") and err.count("\n") == 1
    assert main(["train", "gates", "--out", str(tmp_path / "g"), "--device", "gpu0"]) == 1
    assert "device 'gpu0' is not a torch device here" in capsys.readouterr().err
    assert main(["train", "digits", "--model", "transformer", "--out", str(tmp_path / "d")]) == 1
    assert "task 'digits' has no model 'transformer'" in capsys.readouterr().err
    with pytest.raises(InputError, match="epochs must be a non-negative integer, got -1"):
        train("gates", epochs=-1, progress=False)
    code = main(["train", "--help"])
    assert code == 0 and "example:\n  compinterp train digits --out runs/digits" in capsys.readouterr().out


def hand_step(recipe: Recipe, seed: int, sigma: float) -> dict[str, torch.Tensor]:
    """One full-batch AdamW step on the gates, written out: the noise ``sigma eps``, ``eps`` from a generator
    seeded with ``seed``, added to the inputs before the forward pass."""
    model = ci.Model(gates.task().build(), seed=seed)
    x, y = gates.load("train")
    if sigma:
        x = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  betas=recipe.betas)
    torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    optimizer.step()
    return model.state_dict()


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_one_step_with_input_noise_is_a_step_on_the_noised_inputs(sigma: float) -> None:
    recipe = Recipe(epochs=1, lr=1e-2, weight_decay=0.5, input_noise=sigma)
    run = train("gates", seed=3, progress=False, recipe=recipe)
    want = hand_step(recipe, 3, sigma)
    assert run.steps == 1 and all(torch.equal(v, want[k]) for k, v in run.model.state_dict().items())
    assert run.recipe.to_json().get("input_noise") == (sigma or None) and run.recipe.to_json()["weight_decay"] == 0.5
    if sigma:
        clean = hand_step(recipe, 3, 0.0)
        assert not all(torch.equal(v, clean[k]) for k, v in run.model.state_dict().items())


def test_noise_leaves_token_ids_alone_and_is_refused_for_token_only_models() -> None:
    ids, x = torch.tensor([[1, 2]]), torch.zeros(2, 3)
    kept, moved = noised([ids, x], 0.5, torch.Generator().manual_seed(0))
    assert kept is ids and moved.std() > 0
    task = modular.task(p=7, train_fraction=0.6, width=8, hidden=8)
    with pytest.raises(InputError, match="input noise 0.1: task 'modular' \\(mlp\\) reads token ids only"):
        train(task, progress=False, recipe=Recipe(epochs=1, lr=1e-2, input_noise=0.1))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(InputError, match="input_noise must be a finite number >= 0"):
            Recipe(epochs=1, lr=1e-2, input_noise=bad)
    with pytest.raises(InputError, match="weight_decay must be a finite number >= 0, got -1"):
        Recipe(epochs=1, lr=1e-2, weight_decay=-1)


def test_cli_input_noise_and_weight_decay_go_into_the_recipe(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "gates", "--out", str(tmp_path / "n"), "--epochs", "1", "--input-noise", "0.2",
                 "--weight-decay", "0.5", "--json"]) == 0
    recipe = json.loads(capsys.readouterr().out)["recipe"]
    assert recipe["input_noise"] == 0.2 and recipe["weight_decay"] == 0.5
    assert main(["train", "gates", "--out", str(tmp_path / "p"), "--epochs", "1", "--json"]) == 0
    recipe = json.loads(capsys.readouterr().out)["recipe"]
    assert "input_noise" not in recipe and recipe == gates.task().recipe().to_json() | {"epochs": 1}
    assert main(["train", "modular", "--out", str(tmp_path / "m"), "--input-noise", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "reads token ids only" in err and err.count("\n") == 1 and not (tmp_path / "m").exists()
