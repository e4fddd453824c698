"""`zoo finetune --nproc 2`: two processes (torchrun, gloo, CPU) train the model one process trains.

Setup: 50 train / 10 val MNIST digits (the digits sample, limit=60), seed 3, batch size 7, so each
global batch splits 4 + 3 and the last one (a single image) leaves the second rank a zero-weighted
stand-in. The equivalence test uses pretrained EfficientNet-Lite0 with every BatchNorm frozen
(`partial --freeze-until head_conv`: dropout and the new classifier train, on images); the cache
and kill tests use MobileNetV3-Small with random weights, whose forward pass is ~15x cheaper.

Tolerance: the two runs do the same arithmetic except that each rank sums its share of a batch's
gradient before DDP adds the shares, and the shares' loss weights (4/7, 3/7) are rounded: float32
rounding, measured at 2e-8 on the weights at lr 0.01, while training moves them by more than 1e-2.
The test allows 1e-6 on weights and losses and demands equal predictions. (On a random backbone,
whose pooled features are nearly constant, a gradient can be pure rounding noise that Adam scales
up to a full step: there the same comparison measured 8e-6 (lr 0.001) and 1e-4 (lr 0.01) on the
weights of one such unit.) Features are extracted in the very batches one process uses: the
caches are compared at 1e-6 and are in practice bit-identical.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo.training.finetune as engine
from zoo.backbones import create_model
from zoo.training.distributed import ShardedDropout, shares

ZOO = str(Path(sys.executable).parent / "zoo")
COMMON = ["--seed", "3", "--batch-size", "7", "--workers", "0"]
FAST = [*COMMON, "--model", "mobilenet_v3_small", "--no-pretrained"]
# fp32: bf16 autocast (this CPU's default) rounds half-batches differently from whole ones, and the test is
# about the distribution, not the precision.
EQUIVALENCE = [*COMMON, "--strategy", "partial", "--freeze-until", "head_conv", "--no-augment", "--epochs", "2",
               "--lr", "0.01", "--precision", "fp32"]
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def digits60(tmp_path_factory) -> Path:
    from zoo.data.samples import write_sample

    out = tmp_path_factory.mktemp("data") / "digits60"
    write_sample("digits", out, seed=0, limit=60)
    return out


def _zoo(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([ZOO, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _start_zoo(*args) -> subprocess.Popen:
    """Started before the single-process run: that run uses one core and the ranks' start-up the other."""
    return subprocess.Popen([ZOO, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: _ended can stop the ranks too


@contextlib.contextmanager
def _ended(run: subprocess.Popen):
    """The started run is killed (with its ranks) if the test fails before it ends."""
    try:
        yield
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()


def _single_process(data: Path, out: Path, **options) -> dict:
    """In this process, with one thread like each rank (so the comparison isolates the distribution)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return engine.finetune(data, out=out, seed=3, batch_size=7, workers=0, **options)
    finally:
        torch.set_num_threads(threads)


def _max_difference(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


# ---------------------------------------------------------------- fast: the pieces
def test_shares_split_each_global_batch_and_keep_the_mean_loss():
    labels = [0, 0, 0, 1, 1, 1, 1]
    for weights in (None, torch.tensor([2.0, 0.5])):
        per_rank = [shares([[0, 1, 2, 3, 4], [5]], labels, weights, rank, 2) for rank in range(2)]
        assert [s.indices for s in per_rank[0]] == [[0, 1, 2], [5]]
        assert [s.indices for s in per_rank[1]] == [[3, 4], [5]]  # no image of [5] left: a stand-in
        assert per_rank[1][1].fraction == 0 and per_rank[1][1].images == 0
        for b in range(2):
            assert sum(r[b].fraction for r in per_rank) == pytest.approx(1.0)
    assert per_rank[0][0].fraction == pytest.approx(3 * 2.0 / (3 * 2.0 + 2 * 0.5))


def test_sharded_dropout_keeps_the_rows_a_single_process_draws():
    x = torch.randn(7, 33)
    torch.manual_seed(11)
    whole = torch.nn.Dropout(0.3).train()(x)
    after_whole = torch.rand(2)
    drop = ShardedDropout(0.3).train()
    drop.rows = (4, 7)
    torch.manual_seed(11)
    part = drop(x[4:])
    assert torch.equal(part, whole[4:])
    assert torch.equal(torch.rand(2), after_whole)  # the random stream stays in step with one process


def test_nproc_relaunches_the_command_without_nproc(runner, tmp_path, monkeypatch):
    import zoo.cli as cli
    from zoo.training import launcher

    seen = {}
    monkeypatch.setattr(launcher, "launch", lambda n, args: seen.update(n=n, args=args) or 0)
    result = runner.invoke(cli.app, ["finetune", str(tmp_path), "--nproc", "2", "--strategy", "partial",
                                     "--no-augment", "--epochs", "3", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert seen == {"n": 2, "args": ["finetune", str(tmp_path), "--strategy", "partial", "--epochs", "3",
                                     "--no-augment", "--out", str(tmp_path / "run")]}


def test_the_launcher_names_the_process_that_failed(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from zoo.training.launcher import _explain

    def failed(**codes):
        return ChildFailedError("cli", {int(r[1:]): ProcessFailure(int(r[1:]), 100 + int(r[1:]), c, "<N/A>")
                                        for r, c in codes.items()})

    # rank 0 stopped by the agent (SIGTERM) or by losing its peer: the killed rank is the cause
    for survivor in (-15, 3):
        status, message, _ = _explain(failed(r0=survivor, r1=-9), 2, str(tmp_path))
        assert status == 1 and message.startswith("Process 1 of 2 was killed by SIGKILL")
    assert _explain(failed(r0=1, r1=-15), 2, str(tmp_path)) == (1, None, False)  # rank 0 said it already
    # rank 0 refused (a UsageError); its peer then aborted in gloo's teardown (seen in CI): rank 0's words stand
    assert _explain(failed(r0=2, r1=-6), 2, str(tmp_path)) == (2, None, False)
    log = tmp_path / "run_x" / "attempt_0" / "1" / "stderr.log"
    log.parent.mkdir(parents=True)
    log.write_text("Error: the images are missing here.\n\n")
    status, message, keep = _explain(failed(r1=1), 2, str(tmp_path))
    assert "Process 1 of 2 failed (exit status 1): Error: the images are missing here." in message
    assert str(log) in message and keep


REFUSING_RANK = """
import torch.distributed as dist
from zoo.errors import UsageError
from zoo.training import distributed

def refuse():
    raise UsageError("no")

@distributed.in_process_group
def work():
    distributed.from_main(refuse)

try:
    work()
except UsageError as e:
    print("refused", e.already_reported, "group left:", dist.is_initialized())
"""


def test_a_rank_that_stops_on_rank_0s_error_leaves_the_process_group():
    # Left to the interpreter's exit, gloo's threads sometimes aborted a process (SIGABRT, seen in CI).
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    ranks = [subprocess.Popen([sys.executable, "-c", REFUSING_RANK], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=120) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outputs
    assert [o.strip() for o, _ in outputs] == ["refused False group left: False", "refused True group left: False"]


def test_nproc_inside_torchrun_is_refused(monkeypatch):
    from zoo.errors import ZooError
    from zoo.training.launcher import launch

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    with pytest.raises(ZooError, match="drop --nproc"):
        launch(2, ["finetune"])


# ---------------------------------------------------------------- slow: real processes
@pytest.mark.slow
def test_two_processes_end_with_the_single_process_weights(digits60, tmp_path):
    run = _start_zoo("finetune", digits60, "--out", tmp_path / "ddp", *EQUIVALENCE, "--nproc", "2")
    with _ended(run):
        single = _single_process(digits60, tmp_path / "single", strategy="partial", freeze_until="head_conv",
                                 augment=False, epochs=2, lr=0.01, precision="fp32")
        _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())

    ranks = metrics["distributed"]
    assert ranks["world_size"] == 2 and ranks["backend"] == "gloo"
    assert ranks["weights_sha256"][0] == ranks["weights_sha256"][1]  # both ranks hold identical weights

    a = load_file(str(tmp_path / "single" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert _max_difference(a, b) <= TOLERANCE
    torch.manual_seed(3)  # the new classifier as finetune initialises it
    start = create_model("efficientnet_lite0", num_classes=10).state_dict()
    assert _max_difference(a, start) > 1e-2  # training moved the weights far more than the tolerance
    assert metrics["confusion_matrix"] == single["confusion_matrix"]
    assert metrics["loss"] == pytest.approx(single["loss"], abs=TOLERANCE)
    rows = [(tmp_path / r / "history.csv").read_text().splitlines()[1:] for r in ("single", "ddp")]
    for one, two in zip(*rows, strict=True):  # train loss and accuracy are gathered from both ranks
        one, two = [float(v) for v in one.split(",")[:6]], [float(v) for v in two.split(",")[:6]]
        assert one == pytest.approx(two, abs=TOLERANCE)


@pytest.mark.slow
def test_distributed_feature_cache_equals_the_single_process_cache(digits60, tmp_path, monkeypatch):
    # Several processes extract with torch (zoo.training.ort_features), and the engine is part of the
    # key: the single process is held to torch too, so the keys compare what this test is about.
    monkeypatch.setenv("ZOO_FEATURE_ENGINE", "torch")
    options = ["--strategy", "head", "--views", "1", "--epochs", "1"]  # one augmented view + the val images
    run = _start_zoo("finetune", digits60, "--out", tmp_path / "ddp", *FAST, *options, "--cache-dir",
                     tmp_path / "two", "--nproc", "2")
    with _ended(run):
        _single_process(digits60, tmp_path / "single", model="mobilenet_v3_small", pretrained=False, strategy="head",
                        views=1, epochs=1, cache_dir=tmp_path / "one")
        _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr

    one = {p.relative_to(tmp_path / "one"): p for p in (tmp_path / "one").rglob("*.safetensors")}
    two = {p.relative_to(tmp_path / "two"): p for p in (tmp_path / "two").rglob("*.safetensors")}
    assert len(one) == 2 and set(one) == set(two)  # same keys: the world size is not part of them
    for key in one:
        f1, f2 = load_file(str(one[key]))["features"], load_file(str(two[key]))["features"]
        assert f1.shape == f2.shape and float((f1 - f2).abs().max()) <= TOLERANCE, key
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["feature_cache"]["computed"] == 2 and metrics["distributed"]["ranks_agree"]


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The process torchrun started for `rank`: a child of the launcher with RANK=<rank> in its environment."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != launcher:
                continue
            if f"RANK={rank}".encode() in (stat.parent / "environ").read_bytes().split(b"\0"):
                return int(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.mark.slow
def test_killing_one_rank_stops_the_run_with_one_message_and_a_resumable_checkpoint(digits60, tmp_path):
    out = tmp_path / "run"
    # partial with a trainable BatchNorm layer (head_conv): DDP over a conv layer and its statistics.
    args = [ZOO, "finetune", str(digits60), "--out", str(out), *FAST, "--strategy", "partial",
            "--freeze-until", "stage5", "--no-augment", "--epochs", "3", "--nproc", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim = _worker_pid(proc.pid, rank=1)
    assert victim is not None and proc.poll() is None, "the run ended before the first checkpoint"
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 1
    assert "Error: Process 1 of 2 was killed by SIGKILL, so torchrun stopped the whole run" in stderr
    assert "run the same command with --resume to continue" in stderr
    assert stderr.count("Error:") == 1 and "Traceback" not in stderr, stderr
    assert (out / "checkpoint.pt").is_file() and not (out / "model.safetensors").exists()

    again = _zoo(*args[1:])  # without --resume: rank 0 refuses, once, and no process hangs
    assert again.returncode == 2 and again.stderr.count("already exists") == 1, again.stderr

    resumed = _zoo(*args[1:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr  # progress and log lines go to stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"]["ranks_agree"] and metrics["epochs"] == 3
    assert len((out / "history.csv").read_text().splitlines()) == 4
