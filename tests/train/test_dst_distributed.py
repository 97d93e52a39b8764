"""Dynamic sparse training on two processes (gloo): every update decides the same masks on every rank."""

from __future__ import annotations

import subprocess
import sys

import torch

from randsparse.train.checkpoint import load_checkpoint
from tests.train._runs import write_config
from tests.train.test_distributed import WORKER, _config, _env


def test_rigl_masks_are_identical_on_both_ranks_after_every_update(tmp_path) -> None:
    # 448 training images, global batch 64: 7 steps, an update after every step before step 5 (0.75 x 7, rounded).
    config = _config("epochs=1", "sparsity.method=rigl", "sparsity.method_options={update_every: 1}")
    path = write_config(tmp_path / "config.yaml", config)
    dump = tmp_path / "dump"
    dump.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [*launcher, str(WORKER), str(dump), "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]
    result = subprocess.run(
        command, env=_env(RANDSPARSE_TEST_DUMP_UPDATES="1"), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [1, 2, 3, 4]
    previous = None
    for step in steps:
        ranks = [torch.load(dump / f"rank{r}-update{step}.pt")["masks"] for r in range(2)]
        assert ranks[0].keys() == ranks[1].keys()
        assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0]), f"ranks differ after step {step}"
        if previous is not None:
            moved = any(not torch.equal(previous[name], ranks[0][name]) for name in previous)
            assert moved, f"step {step} moved nothing"
        previous = ranks[0]
    assert not list(dump.glob("rank*-update5.pt"))
    for epoch in (1,):  # the weights stay the same on both ranks too
        a, b = (torch.load(dump / f"rank{r}-epoch{epoch}.pt")["model"] for r in range(2))
        assert all(torch.equal(a[k], b[k]) for k in a)
    saved = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert saved["sparse_training"]["updates"] == len(steps)
