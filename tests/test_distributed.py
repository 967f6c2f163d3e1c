"""Scale-out: two gloo processes on CPU, each checking its shard, give the single-process report."""

from __future__ import annotations

import json
import math
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compinterp.data import gaussian
from compinterp.faithfulness import check, interchange
from compinterp.interpretation import Interpretation
from compinterp.model import Model
from compinterp.syntax import Bilinear, Space, Unembed, chain, residual

X, LOGITS = Space("x", 6), Space("logits", 5)
N = 23  # odd, so the two shards differ in size
DEADLINE_S = 120


def setup() -> tuple[Model, Interpretation, tuple[torch.Tensor, torch.Tensor]]:
    """The same model, explanation (mlp1 perturbed) and labelled data in every process."""
    model = Model(chain(residual(Bilinear("mlp0", X, X, hidden=8)), residual(Bilinear("mlp1", X, X, hidden=8)),
                        Unembed("out", X, LOGITS)), seed=0)
    p = {k: v.detach() for k, v in model.box_params("mlp1").items()}
    bad = {"L": p["L"], "R": p["R"] * 0.5, "D": p["D"]}
    interp = Interpretation(model, boxes={"mlp1": Bilinear("bad", X, X, hidden=8)}, params={"bad": bad})
    g = torch.Generator().manual_seed(3)
    return model, interp, (torch.randn(N, 6, generator=g), torch.randint(0, 5, (N,), generator=g))


def reports() -> dict[str, Any]:
    """The reports computed in each process: a labelled check, an interchange on generated data, and the exact
    check under a Gaussian fitted to the data (each rank sums its shard)."""
    model, interp, data = setup()
    return {"check": check(model, interp, data, batch_size=4, progress=False).to_json(),
            "fitted": check(model, interp, "exact", fit=data, batch_size=4).to_json(),
            "interchange": interchange(model, interp, gaussian(N, seed=1), gaussian(N, seed=2), "mlp0",
                                       batch_size=3, progress=False).to_json()}


def worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: join the gloo group, compute the reports, write them to ``out/rank.json``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        Path(out, f"{rank}.json").write_text(json.dumps(reports()))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_close(a: Any, b: Any, path: str = "") -> None:
    """Equal up to 1e-6 in every number, and exactly elsewhere."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            assert_close(u, v, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{path}: {a} != {b}"
    else:
        assert a == b, path


def test_two_gloo_processes_equal_one(tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    context = mp.start_processes(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the two gloo processes did not finish in {DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    single = reports()
    assert single["check"]["samples"] == N and single["check"]["worst_box"] == "mlp1"
    assert single["fitted"]["data"] == f"N(mean, cov) fitted to {N} samples"
    for rank in (0, 1):
        assert_close(json.loads((tmp_path / f"{rank}.json").read_text()), single)
