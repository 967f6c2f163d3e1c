"""Training a task's model: AdamW over shuffled batches, deterministic for a seed, scored on held-out data.

>>> from compinterp.tasks import gates
>>> run = train(gates.task(), seed=0, epochs=30, progress=False)
>>> run.test_accuracy > 0.95, run.epochs, run.model.dom.dims
(True, 30, (6,))
>>> sorted(TASKS)
['digits', 'gates', 'modular', 'text']
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import compinterp
from compinterp.data import resolve_device
from compinterp.disk import read_json
from compinterp.errors import FormatError, InputError
from compinterp.model import Model
from compinterp.tasks import digits, gates, modular, text
from compinterp.tasks.task import Recipe, Task

TASKS: Mapping[str, Callable[[], Task]] = MappingProxyType(
    {"digits": digits.task, "modular": modular.task, "gates": gates.task, "text": text.task})
"""Each task's name and its factory (the real task with its default settings)."""

RUN_FILE = "train.json"
"""The file :meth:`TrainResult.save` writes beside the model, holding the run's numbers."""

_EVAL_BATCH = 4096

_TRAIN_SCORED = 2 ** 20
"""The training split is scored on at most this many labelled positions (its first rows)."""


def get_task(task: str | Task) -> Task:
    """The task named ``task`` (one of :data:`TASKS`), or ``task`` itself."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; the tasks are {', '.join(TASKS)}")
    return TASKS[task]()


@dataclass(frozen=True)
class TrainResult:
    """A trained model and the numbers of its run (losses are the task's loss, averaged)."""

    model: Model
    task: str
    model_name: str
    seed: int
    epochs: int
    steps: int
    recipe: Recipe
    options: Mapping[str, Any]
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float
    device: str
    measured: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The run as JSON (what ``train.json`` holds)."""
        return {"task": self.task, "model": self.model_name, "seed": self.seed, "epochs": self.epochs,
                "steps": self.steps, "recipe": self.recipe.to_json(), "options": dict(self.options),
                "train_loss": self.train_loss, "train_accuracy": self.train_accuracy,
                "test_loss": self.test_loss, "test_accuracy": self.test_accuracy,
                "seconds": self.seconds, "device": self.device, "parameters": self.model.num_params(),
                **self.measured, "compinterp_version": compinterp.__version__}

    def save(self, path: str | Path) -> Path:
        """Write the model to directory ``path`` (:func:`compinterp.save`) with the numbers in
        ``path/train.json``, both swapped in together (a killed save leaves the old run or the new one)."""
        from compinterp.files import save

        return save(self.model, path, sidecars={RUN_FILE: json.dumps(self.to_json(), indent=1) + "\n"})

    def __str__(self) -> str:
        return (f"{self.task} ({self.model_name}, {self.model.num_params():,} parameters), seed {self.seed}, "
                f"{self.epochs} epochs in {self.seconds:.1f} s on {self.device}: held-out accuracy "
                f"{self.test_accuracy:.4f} (train {self.train_accuracy:.4f}, loss {self.train_loss:.3g})")


def read_run(path: str | Path) -> dict[str, Any] | None:
    """The numbers of the run saved in model directory ``path``, or ``None`` if it has none."""
    file = Path(path) / RUN_FILE
    if not os.path.lexists(file):
        return None
    run = read_json(file)
    if not isinstance(run, dict):
        raise FormatError(f"{file}: expected a JSON object, got {type(run).__name__}")
    return run


def train(task: str | Task, *, model: str | None = None, seed: int = 0, epochs: int | None = None,
          device: str | torch.device = "cpu", progress: bool = True, recipe: Recipe | None = None) -> TrainResult:
    """Train ``model`` (default: the task's default) on ``task``'s training split and score it on both splits.

    The model's parameters start from ``seed`` and the batches are shuffled by a generator
    seeded with ``seed``, so a run is a function of its arguments (on a given device); the recipe's input
    noise comes from a second generator on ``device``, seeded with ``seed``, so it leaves the batch order
    alone. ``epochs`` overrides the recipe's epochs; ``recipe`` replaces the recipe.
    """
    task = get_task(task)
    name = task.model_name(model)
    recipe = recipe or task.recipe(name)
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    if isinstance(recipe.epochs, bool) or not isinstance(recipe.epochs, int) or recipe.epochs < 0:
        raise InputError(f"epochs must be a non-negative integer, got {recipe.epochs!r}")
    device = resolve_device(device)
    train_data = [t.to(device) for t in task.data("train", name)]
    test_data = [t.to(device) for t in task.data("test", name)]
    if recipe.input_noise and not any(t.is_floating_point() for t in train_data[:-1]):
        raise InputError(f"input noise {recipe.input_noise}: task '{task.name}' ({name}) reads token ids only, "
                         "with no float input to add Gaussian noise to")
    noise = torch.Generator(device=device).manual_seed(seed) if recipe.input_noise else None
    net = Model(task.build(name), seed=seed).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                  betas=recipe.betas)
    n = len(train_data[0])
    size = n if recipe.batch_size is None else recipe.batch_size
    generator = torch.Generator().manual_seed(seed)
    total = recipe.epochs * math.ceil(n / size)
    steps, start = 0, time.perf_counter()
    bar = tqdm(range(recipe.epochs), desc=f"train {task.name}", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    net.train()
    for _ in bar:
        order = torch.randperm(n, generator=generator).to(device) if size < n else None
        for first in range(0, n, size):
            rows = order[first:first + size] if order is not None else slice(None)
            *xs, labels = (t[rows] for t in train_data)
            if noise is not None:
                xs = noised(xs, recipe.input_noise, noise)
            loss = _loss(task.loss, net(*xs), labels)
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr_at(steps, total)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        bar.set_postfix(loss=f"{loss.item():.3g}", refresh=False)
    net.eval()
    seconds = time.perf_counter() - start
    scored = max(1, _TRAIN_SCORED // max(1, train_data[-1][0].numel()))
    train_loss, train_accuracy = evaluate(net, task.loss, [t[:scored] for t in train_data])
    test_loss, test_accuracy = evaluate(net, task.loss, test_data)
    measured = task.measure(net) if task.measure is not None else {}
    return TrainResult(net, task.name, name, seed, recipe.epochs, steps, recipe, dict(task.options), train_loss,
                       train_accuracy, test_loss, test_accuracy, seconds, str(device), measured)


def noised(xs: Sequence[torch.Tensor], sigma: float, generator: torch.Generator) -> list[torch.Tensor]:
    """``x + sigma eps`` with ``eps ~ N(0, I)`` drawn from ``generator`` for each float input ``x`` in turn;
    integer inputs (token ids) as they are."""
    return [x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            if x.is_floating_point() else x for x in xs]


def evaluate(model: Model, loss: str, data: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``data`` (inputs, then labels) under loss ``loss``:
    for ``cross_entropy`` the fraction of labelled positions whose argmax is the label, for
    ``binary`` the fraction of targets on the right side of 0."""
    *xs, labels = data
    total_loss, right, count = 0.0, 0.0, 0
    size = max(1, _EVAL_BATCH // max(1, labels[0].numel()))      # _EVAL_BATCH labelled positions a batch
    with torch.inference_mode():
        for first in range(0, len(labels), size):
            batch = [t[first:first + size] for t in xs]
            y, target = model(*batch), labels[first:first + size]
            if loss == "binary":
                total_loss += F.binary_cross_entropy_with_logits(y, target, reduction="sum").item()
                right += ((y > 0) == target.bool()).sum().item()
                count += target.numel()
            else:
                flat, ids = y.reshape(-1, y.shape[-1]), target.reshape(-1)
                keep = ids != modular.IGNORE
                total_loss += F.cross_entropy(flat[keep], ids[keep], reduction="sum").item()
                right += (flat[keep].argmax(-1) == ids[keep]).sum().item()
                count += int(keep.sum())
    if count == 0:
        return math.nan, math.nan
    return total_loss / count, right / count


def _loss(kind: str, y: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The task's training loss on one batch."""
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(y, labels)
    return F.cross_entropy(y.reshape(-1, y.shape[-1]), labels.reshape(-1), ignore_index=modular.IGNORE)
