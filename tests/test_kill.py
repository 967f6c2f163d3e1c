"""Saves killed at random points (SIGKILL) leave the old or the new model, whole; the next save cleans up."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from compinterp import disk
from compinterp.files import save
from compinterp.model import Model, load
from compinterp.syntax import Linear, Space
from compinterp.tasks.task import Recipe
from compinterp.tasks.train import TrainResult

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked savers")


@pytest.fixture(scope="module")
def models() -> dict[str, Model]:
    """Two models of about 3 MB each, the old and the new."""
    h = Space("h", 512)
    diagram = Linear("a", h, h) >> Linear("b", h, h) >> Linear("c", h, h)
    return {"old": Model(diagram, seed=1), "new": Model(diagram, seed=2)}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Fork from a process running one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def which(models: dict[str, Model], target: Path) -> str | None:
    """Which model the target loads as, exactly ("old" or "new"), or None."""
    back = load(target).state_dict()
    return next((version for version, model in models.items()
                 if all(torch.equal(back[k], v) for k, v in model.state_dict().items())), None)


def started(save_new: Callable[[], object], two_step: bool) -> int:
    """A forked child that saves the new model and exits; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            if two_step:
                disk._exchange = lambda a, b: False   # the two-rename swap, in the child only
            save_new()
        finally:
            os._exit(0)
    return pid


@pytest.mark.parametrize("two_step, kills", [(False, 40), (True, 20)])
def test_killed_saves_leave_the_old_or_the_new_model(models: dict[str, Model], tmp_path: Path, two_step: bool,
                                                     kills: int) -> None:
    target = tmp_path / "target"
    save(models["old"], tmp_path / "scratch")
    begin = time.perf_counter()
    os.waitpid(started(lambda: save(models["new"], tmp_path / "scratch"), two_step), 0)
    span = (time.perf_counter() - begin) * 1.2                    # a whole save, in a child
    save(models["old"], target)
    rng = random.Random(0)
    found = []
    for _ in range(kills):
        pid = started(lambda: save(models["new"], target), two_step)
        time.sleep(rng.uniform(0, span))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        found.append(which(models, target))                      # load puts back a model left aside
        if found[-1] == "new":
            save(models["old"], target)
        span *= 0.8 if found[-1] == "new" else 1.25              # kill around the swap, whatever the load
    assert None not in found and {"old", "new"} <= set(found), found
    save(models["new"], target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scratch", "target"]   # temporaries of the killed cleaned
    assert which(models, target) == "new"


def run_of(model: Model, seed: int) -> TrainResult:
    """A training run's result holding ``model`` (its numbers made up: only saving is tested)."""
    return TrainResult(model, "digits", "mlp", seed, 1, 1, Recipe(epochs=1, lr=0.1), {}, 0.5, 0.5, 0.5, 0.5, 1.0, "cpu")


def test_killed_training_saves_keep_their_train_json(models: dict[str, Model], tmp_path: Path) -> None:
    from compinterp.tasks.train import RUN_FILE
    runs = {version: run_of(model, seed) for (version, model), seed in zip(models.items(), (0, 1))}
    target = tmp_path / "target"
    runs["old"].save(tmp_path / "scratch")
    begin = time.perf_counter()
    os.waitpid(started(lambda: runs["new"].save(tmp_path / "scratch"), False), 0)
    span = (time.perf_counter() - begin) * 1.2
    runs["old"].save(target)
    rng = random.Random(1)
    for _ in range(12):
        pid = started(lambda: runs["new"].save(target), False)
        time.sleep(rng.uniform(0, span))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        version = which(models, target)
        assert version is not None
        assert json.loads((target / RUN_FILE).read_text())["seed"] == runs[version].seed
        if version == "new":
            runs["old"].save(target)
        span *= 0.8 if version == "new" else 1.25


def test_loads_racing_saves_always_find_a_whole_model(tmp_path: Path) -> None:
    small = {version: Model(Linear("f", Space("x", 64), Space("x", 64)), seed=seed)
             for version, seed in (("old", 1), ("new", 2))}
    target = tmp_path / "target"
    save(small["old"], target)
    pid = os.fork()
    if pid == 0:
        try:
            for i in range(10 ** 6):
                save(small["new" if i % 2 else "old"], target)
        finally:
            os._exit(0)
    try:
        seen = [which(small, target) for _ in range(100)]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert None not in seen
