"""What a task is: data splits, the models declared for it, a loss and a training recipe per model.

>>> from compinterp.tasks import gates
>>> task = gates.task()
>>> task.name, task.default_model, task.loss
('gates', 'mlp', 'binary')
>>> print(task.build().dom, "->", task.build().cod)
bits:6 -> gates:6
>>> task.build("resnet")
Traceback (most recent call last):
...
compinterp.errors.InputError: task 'gates' has no model 'resnet'; its models: mlp, chi
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from compinterp.errors import InputError
from compinterp.syntax import Diagram

LOSSES = ("cross_entropy", "binary")
"""``cross_entropy``: logits and integer labels (``-100`` ignored); ``binary``: one logit per
target in ``{0, 1}`` (binary cross-entropy)."""


SCHEDULES = ("constant", "cosine")
"""Learning-rate schedules after the warm-up: ``constant`` keeps ``lr``; ``cosine`` keeps it, then over the
last ``cooldown`` fraction of the steps decays it along half a cosine to ``final_lr * lr``."""


@dataclass(frozen=True)
class Recipe:
    """How to train: AdamW with ``lr``, ``weight_decay`` and ``betas`` for ``epochs`` passes over the
    training split, in shuffled batches of ``batch_size`` (``None``: the whole split at once); the
    learning rate rises linearly over the first ``warmup`` steps, then follows ``schedule``
    (:data:`SCHEDULES`). ``input_noise = sigma > 0`` trains on ``x + sigma eps``, ``eps ~ N(0, I)`` drawn
    afresh every step for every float input (token ids are left as they are), the bilinear-MLP paper's
    regulariser.

    >>> r = Recipe(epochs=1, lr=1.0, warmup=2, schedule="cosine", final_lr=0.0, cooldown=0.5)
    >>> [round(r.lr_at(step, 10), 3) for step in range(10)]
    [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.905, 0.655, 0.345, 0.095]
    >>> Recipe(epochs=1, lr=1e-3).to_json()
    {'epochs': 1, 'lr': 0.001, 'weight_decay': 0.0, 'batch_size': None, 'betas': [0.9, 0.999]}
    """

    epochs: int
    lr: float
    weight_decay: float = 0.0
    batch_size: int | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    schedule: str = "constant"
    final_lr: float = 0.1
    cooldown: float = 1.0
    input_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise InputError(f"unknown learning-rate schedule {self.schedule!r}; the schedules are "
                             f"{', '.join(SCHEDULES)}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise InputError(f"warmup must be a non-negative number of steps, got {self.warmup!r}")
        if not 0 < self.cooldown <= 1:
            raise InputError(f"cooldown must be a fraction of the steps in (0, 1], got {self.cooldown!r}")
        for name in ("weight_decay", "input_noise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")

    def lr_at(self, step: int, steps: int) -> float:
        """The learning rate of optimizer step ``step`` (from 0) of a run of ``steps`` steps."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        start = max(self.warmup, steps - round(self.cooldown * steps))
        if self.schedule == "constant" or step < start:
            return self.lr
        done = min(1.0, (step - start) / max(1, steps - start))
        return self.lr * (self.final_lr + (1 - self.final_lr) * 0.5 * (1 + math.cos(math.pi * done)))

    def to_json(self) -> dict[str, Any]:
        """The recipe as JSON (a schedule and input noise only when there are, so that recipes without them read
        as before)."""
        out = {"epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
               "batch_size": self.batch_size, "betas": list(self.betas)}
        if self.warmup:
            out["warmup"] = self.warmup
        if self.schedule != "constant":
            out |= {"schedule": self.schedule, "final_lr": self.final_lr, "cooldown": self.cooldown}
        if self.input_noise:
            out["input_noise"] = self.input_noise
        return out


@dataclass(frozen=True)
class Task:
    """A task: ``models`` maps each model name to its builder and recipe (the first is the
    default); ``load(split, model)`` gives the ``train`` or ``test`` split as the model's inputs
    followed by labels; ``options`` are the task's own settings, recorded with every run;
    ``measure(model)``, if given, returns the task's own numbers for a trained model (JSON)."""

    name: str
    about: str
    models: Mapping[str, tuple[Callable[[], Diagram], Recipe]]
    load: Callable[[str, str], tuple[torch.Tensor, ...]]
    loss: str = "cross_entropy"
    options: Mapping[str, Any] = field(default_factory=dict)
    measure: Callable[[Any], dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise InputError(f"task '{self.name}': unknown loss {self.loss!r}; the losses are {', '.join(LOSSES)}")
        if not self.models:
            raise InputError(f"task '{self.name}' has no models")

    @property
    def default_model(self) -> str:
        """The model trained when none is named."""
        return next(iter(self.models))

    def model_name(self, model: str | None) -> str:
        """``model``, or the default, checked to be one of this task's models."""
        name = self.default_model if model is None else model
        if name not in self.models:
            raise InputError(f"task '{self.name}' has no model {name!r}; its models: {', '.join(self.models)}")
        return name

    def build(self, model: str | None = None) -> Diagram:
        """The diagram of ``model`` (default: the task's default model)."""
        return self.models[self.model_name(model)][0]()

    def recipe(self, model: str | None = None) -> Recipe:
        """How ``model`` is trained by default."""
        return self.models[self.model_name(model)][1]

    def data(self, split: str, model: str | None = None) -> tuple[torch.Tensor, ...]:
        """Split ``train`` or ``test`` as ``model`` reads it: inputs, then labels."""
        if split not in ("train", "test"):
            raise InputError(f"task '{self.name}': split must be 'train' or 'test', got {split!r}")
        return self.load(split, self.model_name(model))
