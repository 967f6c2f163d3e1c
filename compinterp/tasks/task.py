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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from compinterp.errors import InputError
from compinterp.syntax import Diagram

LOSSES = ("cross_entropy", "binary")
"""``cross_entropy``: logits and integer labels (``-100`` ignored); ``binary``: one logit per
target in ``{0, 1}`` (binary cross-entropy)."""


@dataclass(frozen=True)
class Recipe:
    """How to train: AdamW with ``lr``, ``weight_decay`` and ``betas`` for ``epochs`` passes over the
    training split, in shuffled batches of ``batch_size`` (``None``: the whole split at once)."""

    epochs: int
    lr: float
    weight_decay: float = 0.0
    batch_size: int | None = None
    betas: tuple[float, float] = (0.9, 0.999)

    def to_json(self) -> dict[str, Any]:
        """The recipe as JSON."""
        return {"epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "betas": list(self.betas)}


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
