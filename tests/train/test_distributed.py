"""Training on several processes (gloo on the CPU): one mask for all, the same weights on every rank,
the result of one process with the same global batch, and no hang when a rank dies."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from randsparse.cli import build_parser
from randsparse.cli import main as cli_main
from randsparse.cli.train import add_parser, torchrun_command
from randsparse.data import EpochBatchSampler, EpochSampler
from randsparse.errors import ConfigError, MaskMismatchError, RandsparseError, UnknownNameError
from randsparse.sparsity import MaskSet, attach
from randsparse.train import RunDir, config_hash, fit, load_config, load_run
from randsparse.train.checkpoint import load_checkpoint
from randsparse.train.distributed import (
    Distributed,
    Launch,
    PeerFailure,
    backend_for,
    is_communication_failure,
    launch_from_env,
    mask_checksum,
    resume_command,
    with_world_size,
)
from tests.train._runs import tiny_config, write_config

WORKER = Path(__file__).with_name("_ddp_worker.py")
TIMEOUT_S = 30  # distributed.timeout_s of these runs: how long a survivor may wait for a dead peer
EPOCHS = 3  # 448 training images, global batch 64: 7 steps per epoch, a checkpoint every 4 steps


def _config(*overrides: str):
    """A 3-epoch run of a small MLP (no BatchNorm, so per-process batches compute what one batch does)."""
    return tiny_config(
        "model.name=mlp",
        "model.width=0.25",
        "model.options={depth: 2, hidden: 256}",
        "data.batch_size=32",
        f"epochs={EPOCHS}",
        "checkpoint_every_steps=4",
        f"distributed.timeout_s={TIMEOUT_S}",
        *overrides,
    )


def _env(**extra: str) -> dict[str, str]:
    # PYTHONFAULTHANDLER: a worker that dies of a signal (SIGABRT, SIGSEGV) prints where every thread was.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_by_hand(tmp: Path, args: list[str], **extra: str) -> list[tuple[subprocess.Popen, Path]]:
    """Two worker processes started with the torchrun environment set by hand (no torchrun agent to kill them)."""
    port = str(_free_port())
    dump = tmp / "dump"
    dump.mkdir(exist_ok=True)
    started = []
    for rank in range(2):
        env = _env(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        log = tmp / f"rank{rank}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, str(WORKER), str(dump), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, **extra},
            )
        started.append((process, log))
    return started


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints/last.pt")["model"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One 2-process run under torchrun (per-process batch 32) and one single-process run with batch 64."""
    root = tmp_path_factory.mktemp("ddp")
    config = write_config(root / "config.yaml", _config())
    dump = root / "dump"
    dump.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [*launcher, str(WORKER), str(dump), "--config", str(config), "--out", str(root / "ddp"), "--quiet"]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    fit(_config("data.batch_size=64"), root / "single")
    return {"ddp": root / "ddp", "single": root / "single", "dump": dump}


# ------------------------------------------------------------------------------ two processes, end to end


def test_masks_are_identical_on_every_rank_and_equal_the_single_process_draw(runs) -> None:
    single = MaskSet.from_state_dict(load_checkpoint(runs["single"] / "checkpoints/last.pt")["masks"])
    for epoch in range(1, EPOCHS + 1):
        for rank in range(2):
            held = torch.load(runs["dump"] / f"rank{rank}-epoch{epoch}.pt")["masks"]
            assert single.equal(held), (rank, epoch)


def test_weights_are_identical_on_every_rank_after_every_epoch(runs) -> None:
    for epoch in range(1, EPOCHS + 1):
        rank0, rank1 = (torch.load(runs["dump"] / f"rank{r}-epoch{epoch}.pt")["model"] for r in range(2))
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), epoch
    held = torch.load(runs["dump"] / f"rank1-epoch{EPOCHS}.pt")["model"]
    saved = _weights(runs["ddp"])
    assert all(torch.equal(held[k], saved[k]) for k in saved)


def test_two_processes_compute_what_one_process_does_with_the_same_global_batch(runs) -> None:
    ddp, single = _weights(runs["ddp"]), _weights(runs["single"])
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-5, atol=1e-6)
    for a, b in zip(_metrics(runs["ddp"]), _metrics(runs["single"]), strict=True):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
        assert a["step"] == b["step"]


def test_summary_records_the_processes_and_the_global_batch(runs) -> None:
    ddp = RunDir(runs["ddp"]).read_summary()
    single = RunDir(runs["single"]).read_summary()
    assert (ddp["world_size"], ddp["batch_size"], ddp["global_batch_size"]) == (2, 32, 64)
    assert (single["world_size"], single["global_batch_size"]) == (1, 64)
    assert ddp["config_hash"] == single["config_hash"], "the same global batch is the same experiment"
    assert ddp["status"] == "completed"
    assert RunDir(runs["ddp"]).read_config().distributed.world_size == 2


def test_a_distributed_checkpoint_loads_in_one_process(runs) -> None:
    state = load_checkpoint(runs["ddp"] / "checkpoints/last.pt")
    assert not any(key.startswith("module.") for key in state["model"])
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    loaded = load_run(runs["ddp"], "last")
    assert loaded.masks is not None
    for name, mask in loaded.masks.items():
        assert torch.all(dict(loaded.model.named_parameters())[name][~mask] == 0)


@pytest.mark.parametrize("victim", [1, 0], ids=["rank1-dies", "rank0-dies"])
def test_a_killed_rank_stops_the_other_within_the_timeout_and_the_run_resumes(tmp_path, runs, victim) -> None:
    config = write_config(tmp_path / "config.yaml", _config())
    run = tmp_path / "run"
    # The victim dies after step 10 (epoch 2, step 3); the last checkpoint is from step 8.
    started = _launch_by_hand(
        tmp_path, ["--config", str(config), "--out", str(run), "--quiet"], RANDSPARSE_TEST_DIE=f"{victim}:10"
    )
    (dead, _), (survivor, survivor_log) = started[victim], started[1 - victim]
    dead.wait(timeout=240)
    died_at = time.monotonic()
    try:
        survivor.wait(timeout=TIMEOUT_S + 30)
    finally:
        survivor.kill()
    assert dead.returncode == -signal.SIGKILL
    assert time.monotonic() - died_at < TIMEOUT_S + 30
    output = survivor_log.read_text()
    assert survivor.returncode == 2, output
    assert "another process failed or stopped answering" in output and "Traceback" not in output
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert (state["progress"]["epoch"], state["progress"]["batch_in_epoch"], state["world_size"]) == (1, 1, 2)
    assert RunDir(run).read_summary()["status"] == ("failed" if victim == 1 else "running")

    if victim == 1:  # resumed on 2 processes (the --nproc shortcut): bit-identical to the uninterrupted run
        resumed = subprocess.run(
            [sys.executable, "-m", "randsparse", "train", "--nproc", "2", "--resume", str(run), "--quiet"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resumed.returncode == 0, resumed.stderr
        reference, weights = _weights(runs["ddp"]), _weights(run)
        assert all(torch.equal(reference[k], weights[k]) for k in reference)
        assert [r["train_loss"] for r in _metrics(run)] == [r["train_loss"] for r in _metrics(runs["ddp"])]
    else:  # resumed in one process with the same global batch: the single-process result, within float tolerance
        copy = tmp_path / "copy"
        shutil.copytree(run, copy)
        config = load_config(copy / "config.yaml", ["distributed.world_size=1", "data.batch_size=64"])
        assert fit(config, copy, resume=True)["status"] == "completed"
        reference, weights = _weights(runs["single"]), _weights(copy)
        for name in reference:
            torch.testing.assert_close(weights[name], reference[name], rtol=1e-5, atol=1e-6)
    assert RunDir(run).read_summary()["status"] == ("completed" if victim == 1 else "running")


def test_a_rank_holding_other_masks_stops_every_rank_before_training(tmp_path) -> None:
    config = write_config(tmp_path / "config.yaml", _config())
    args = ["--config", str(config), "--out", str(tmp_path / "run"), "--quiet"]
    started = _launch_by_hand(tmp_path, args, RANDSPARSE_TEST_FLIP_MASK="1")
    for process, log in started:
        try:
            process.wait(timeout=240)
        finally:
            process.kill()
        output = log.read_text()
        assert process.returncode == 2, output
        assert "differ from rank 0's" in output and "rank(s) 1" in output
    assert not (tmp_path / "run/checkpoints/last.pt").exists()


# ------------------------------------------------------------------------------ DDP and the mask hooks


@pytest.fixture
def process_group(tmp_path):
    """A real gloo process group of one process, in this test process."""
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    torch_dist.destroy_process_group()


def _masked_mlp() -> tuple[nn.Module, MaskSet, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    generator = torch.Generator().manual_seed(1)
    masks = MaskSet(
        {n: torch.rand(p.shape, generator=generator) < 0.3 for n, p in model.named_parameters() if n.endswith("weight")}
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    attach(model, masks, optimizer)
    return model, masks, optimizer


def test_mask_hooks_zero_pruned_gradients_before_ddp_reduces_them(process_group) -> None:
    model, masks, optimizer = _masked_mlp()
    ddp = DistributedDataParallel(model)
    reduced: dict[int, torch.Tensor] = {}

    def record_then_reduce(state, bucket):
        for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
            reduced[id(param)] = grad.clone()
        return torch_dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])

    ddp.register_comm_hook(None, record_then_reduce)
    params = dict(model.named_parameters())
    for _ in range(3):
        optimizer.zero_grad()
        ddp(torch.randn(5, 8)).square().sum().backward()
        for name, mask in masks.items():
            assert torch.all(reduced[id(params[name])][~mask] == 0), "the reducer saw a pruned gradient"
            assert int(reduced[id(params[name])][mask].count_nonzero()) > 0
        optimizer.step()
        for name, mask in masks.items():
            assert torch.all(params[name][~mask] == 0)


def test_ddp_does_not_broadcast_the_mask_buffers(process_group) -> None:
    model, _, _ = _masked_mlp()
    # world_size=2 only makes `wrap` build DDP; the process group underneath has one process.
    ddp = Distributed(world_size=2, backend="gloo").wrap(model)
    assert isinstance(ddp, DistributedDataParallel)
    assert not [name for name in ddp.named_module_buffers if "randsparse_mask" in name]


# ------------------------------------------------------------------------------ data order


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 300),
    batch=st.integers(1, 16),
    world=st.integers(1, 4),
    epoch=st.integers(0, 5),
    start=st.integers(0, 10),
)
def test_the_ranks_batches_at_each_step_make_up_the_single_process_batch(size, batch, world, epoch, start) -> None:
    seed = 7
    single = EpochBatchSampler(EpochSampler(size, seed), batch * world, drop_last=True)
    ranks = [
        EpochBatchSampler(EpochSampler(size, seed), batch, drop_last=True, rank=r, world_size=world)
        for r in range(world)
    ]
    for sampler in (single, *ranks):
        sampler.set_epoch(epoch, start)
    assert all(len(r) == len(single) == max(size // (batch * world) - start, 0) for r in ranks)
    per_rank = [list(r) for r in ranks]
    for step, whole in enumerate(single):
        assert [i for batches in per_rank for i in batches[step]] == list(whole)
        assert len({batches[step].seed for batches in per_rank}) == world, "each rank augments with its own seed"


def test_a_mid_epoch_start_replays_the_rest_of_the_epoch_with_the_same_augmentation_seeds() -> None:
    sampler = EpochBatchSampler(EpochSampler(100, 3), 8, drop_last=True, rank=1, world_size=2)
    sampler.set_epoch(2)
    whole = [(list(b), b.seed) for b in sampler]
    sampler.set_epoch(2, 3)
    assert [(list(b), b.seed) for b in sampler] == whole[3:]
    sampler.set_epoch(3)
    assert [list(b) for b in sampler] != [b for b, _ in whole], "every epoch has its own order"


def test_one_process_keeps_the_last_partial_batch_and_several_refuse_it() -> None:
    sampler = EpochBatchSampler(EpochSampler(10, 0), 4, drop_last=False)
    assert [len(b) for b in sampler] == [4, 4, 2]
    with pytest.raises(ValueError, match="drop_last"):
        EpochBatchSampler(EpochSampler(10, 0), 4, drop_last=False, rank=0, world_size=2)


# ------------------------------------------------------------------------------ config and identity


def test_identity_counts_the_global_batch_not_how_it_is_split() -> None:
    split = tiny_config("data.batch_size=32", "distributed.world_size=2")
    whole = tiny_config("data.batch_size=64")
    assert split.global_batch_size == whole.global_batch_size == 64
    assert config_hash(split) == config_hash(whole)
    assert config_hash(tiny_config("data.batch_size=32")) != config_hash(whole)
    assert config_hash(tiny_config("distributed.timeout_s=5", "distributed.backend=gloo")) == config_hash(tiny_config())


def test_the_launch_fills_in_the_world_size_and_a_different_one_is_refused_with_the_fix() -> None:
    config = tiny_config("data.batch_size=32")
    assert with_world_size(config, 1) is config
    assert with_world_size(config, 4).distributed.world_size == 4
    declared = tiny_config("data.batch_size=32", "distributed.world_size=2")
    assert with_world_size(declared, 2) is declared
    with pytest.raises(ConfigError, match=r"--nproc 2.*distributed.world_size=4 data.batch_size=16"):
        with_world_size(declared, 4)


def test_launch_is_read_from_the_torchrun_environment() -> None:
    assert launch_from_env({}) == Launch(0, 1, 0)
    assert launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Launch(3, 4, 1)
    for bad in ({"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"}):
        with pytest.raises(ConfigError):
            launch_from_env(bad)


def test_nccl_is_refused_without_cuda() -> None:
    cpu = torch.device("cpu")
    assert backend_for("auto", cpu) == "gloo"
    with pytest.raises(ConfigError, match="nccl needs CUDA"):
        backend_for("nccl", cpu)


# ------------------------------------------------------------------------------ the collectives' logic


def test_mask_checksum_changes_with_one_bit_and_not_with_order() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(3, 4, generator=generator) < 0.5, "b": torch.rand(5, generator=generator) < 0.5}
    assert mask_checksum(masks) == mask_checksum({"b": masks["b"], "a": masks["a"]})
    flipped = {**masks, "b": masks["b"].clone()}
    flipped["b"][2] = ~flipped["b"][2]
    assert mask_checksum(flipped) != mask_checksum(masks)
    assert mask_checksum({"a": masks["a"].reshape(4, 3)}) != mask_checksum({"a": masks["a"]})


def test_communication_failures_are_told_apart_from_bugs() -> None:
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer")
    assert is_communication_failure(gloo)
    assert is_communication_failure(torch_dist.DistBackendError("anything"))
    assert not is_communication_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_communication_failure(torch.OutOfMemoryError("CUDA out of memory; NCCL"))


def test_a_failed_collective_becomes_a_peer_failure_and_other_errors_pass() -> None:
    two = Distributed(rank=1, world_size=2)
    message = r"rank 1 of 2 stopped during step 3: .*\(Connection closed by peer \[127.0.0.1\]:1\)"
    with pytest.raises(PeerFailure, match=message), two.guard("step 3"):
        raise RuntimeError("[pair.cc:561] Connection closed by peer [127.0.0.1]:1. This is typically caused")
    with pytest.raises(RuntimeError, match="shapes"), two.guard("step 3"):
        raise RuntimeError("shapes do not match")


def test_one_process_runs_every_collective_locally() -> None:
    one = Distributed()
    assert one.from_main(lambda: 41 + 1, "x") == 42
    assert one.sum(torch.tensor([1.5, 2.0])) == [1.5, 2.0]
    assert one.gather_to_main("state") == ["state"]
    one.check_masks({"a": torch.ones(2, dtype=torch.bool)})
    model = nn.Linear(2, 2)
    assert one.wrap(model) is model


def test_an_error_on_rank_zero_is_raised_on_every_rank(monkeypatch) -> None:
    sent = []

    def broadcast(message, src, device):  # what rank 0 sends is what rank 1 receives
        if sent:
            message[0] = sent[0]
        else:
            sent.append(message[0])

    monkeypatch.setattr(torch_dist, "broadcast_object_list", broadcast)

    def refuse():
        raise UnknownNameError("model", "nonet", ["mlp"])

    with pytest.raises(UnknownNameError):
        Distributed(rank=0, world_size=2).from_main(refuse, "building")
    with pytest.raises(RandsparseError, match="unknown model 'nonet'"):
        Distributed(rank=1, world_size=2).from_main(refuse, "building")


def test_masks_that_differ_from_rank_zero_are_refused_on_every_rank(monkeypatch) -> None:
    masks = {"a": torch.ones(4, dtype=torch.bool)}
    other = mask_checksum({"a": torch.zeros(4, dtype=torch.bool)})

    def gather(out, value):
        out[:] = [value, other, value]

    monkeypatch.setattr(torch_dist, "all_gather_object", gather)
    with pytest.raises(MaskMismatchError, match=r"rank\(s\) 1 differ from rank 0's"):
        Distributed(rank=2, world_size=3).check_masks(masks)


# ------------------------------------------------------------------------------ the command line


def test_nproc_runs_the_same_command_under_torchrun() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--nproc", "4", "--config", "c.yaml", "--quiet", "epochs=2", "seed=1"])
    command = torchrun_command(4, args)
    assert command[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert command[5:] == [
        "-m",
        "randsparse",
        "train",
        "--config",
        "c.yaml",
        "--quiet",
        "--format",
        "text",
        "epochs=2",
        "seed=1",
    ]


def test_nproc_inside_torchrun_and_a_config_for_other_processes_are_one_line_errors(
    tmp_path, monkeypatch, capsys
) -> None:
    config = write_config(tmp_path / "config.yaml", tiny_config("distributed.world_size=4"))
    assert cli_main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "--nproc 4" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli_main(["train", "--nproc", "2", "--config", str(config)]) == 2
    assert "drop it when launching with torchrun" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_worker_exits_with_its_code_and_flushed_output_but_without_interpreter_teardown(tmp_path) -> None:
    """After joining a process group the CLI leaves through os._exit (gloo threads outlive DDP's group)."""
    script = (
        "import atexit, sys\n"
        "import randsparse.train.distributed as distributed\n"
        "from randsparse.cli import main\n"
        "atexit.register(lambda: print('interpreter teardown ran'))\n"
        "distributed._joined = True  # what session() records once it has joined a group\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    plan = ["plan", "--model", "mlp", "--sparsity", "0.9", "--format", "json"]
    env = _env()
    done = subprocess.run([sys.executable, "-c", script, *plan], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)  # block-buffered output (a pipe) reached the reader whole
    assert "interpreter teardown ran" not in done.stdout
    failed = subprocess.run(
        [sys.executable, "-c", script, "train", "--config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("randsparse train: error:") and "missing.yaml" in failed.stderr
    assert "interpreter teardown ran" not in failed.stdout


def test_the_resume_advice_names_the_processes_the_run_had() -> None:
    """A run stopped on 2 processes resumes on 2 (the --nproc shortcut on one machine)."""
    one_machine = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    assert resume_command("runs/a b", 1, {}) == "randsparse train --resume 'runs/a b'"
    assert resume_command("runs/x", 2, one_machine) == "randsparse train --resume runs/x --nproc 2"
    args = build_parser().parse_args(shlex.split(resume_command("runs/x", 2, one_machine))[1:])
    assert (args.resume, args.nproc) == ("runs/x", 2)
    assert "torchrun on the same 4 processes" in resume_command("runs/x", 4, {"LOCAL_WORLD_SIZE": "2"})
