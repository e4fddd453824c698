"""`zoo finetune --nproc N`: N processes of one run on this machine, through torch.distributed.run.

The launcher's one job beyond starting them is the message when the run fails: the root cause
(a process killed from outside, or one that failed on its own), said once, and nothing when rank 0
has already printed its own sentence on this console.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile

import torch

from zoo.errors import UsageError, ZooError
from zoo.training.distributed import LAUNCHER_ENV, PEER_LOST_EXIT, USAGE_EXIT, WORK_FAILED_EXIT, launched_by_torchrun

RANK0_EXPLAINED = (WORK_FAILED_EXIT, USAGE_EXIT, 130)  # rank 0's ZooError or Ctrl-C: printed on this console


def launch(nproc: int, args: list[str]) -> int:
    """`python -m zoo.cli ARGS` in nproc processes on this machine, through torch.distributed.run.

    Returns rank 0's exit status when rank 0 already explained the failure (a ZooError, Ctrl-C);
    raises ZooError with one sentence when a process died or failed on its own.
    """
    if launched_by_torchrun():
        raise UsageError("--nproc starts torchrun itself: drop --nproc when you launch zoo with torchrun.")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise UsageError(f"--nproc {nproc} needs one GPU per process and this machine has {torch.cuda.device_count()}: "
                         f"use --nproc {torch.cuda.device_count()} or fewer.")
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    log_dir = tempfile.mkdtemp(prefix="zoo-torchrun-")
    argv = ["--standalone", "--nproc-per-node", str(nproc), "--log-dir", log_dir,
            # ranks other than 0 write to log files: the console shows one run, not N copies of it
            "--redirects", ",".join(f"{r}:3" for r in range(1, nproc)), "-m", "zoo.cli", *args]
    saved_env = dict(os.environ)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[LAUNCHER_ENV] = "1"
    loggers = {n: logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
               if n.startswith("torch.distributed")}
    levels = {n: lg.level for n, lg in loggers.items()}
    for lg in loggers.values():
        lg.setLevel(logging.CRITICAL)  # the agent's own log lines; the message below says what happened
    keep_logs = False
    try:
        torchrun.main(argv)
        return 0
    except ChildFailedError as e:
        status, message, keep_logs = _explain(e, nproc, log_dir)
        if message:
            raise ZooError(message) from None
        return status
    except SignalException:
        return 130  # Ctrl-C reached every process; rank 0 said how to resume
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for n, lg in loggers.items():
            lg.setLevel(levels[n])
        if not keep_logs:
            shutil.rmtree(log_dir, ignore_errors=True)


def _printed_an_error(log_dir: str, local_rank: int) -> bool:
    """Whether a process's redirected output holds an error line of its own."""
    for name in ("stderr.log", "stdout.log"):
        for path in glob.glob(os.path.join(log_dir, "*", "attempt_*", str(local_rank), name)):
            with open(path, errors="replace") as f:
                if any(line.startswith("Error:") for line in f):
                    return True
    return False


def _explain(error, nproc: int, log_dir: str) -> tuple[int, str | None, bool]:
    """(exit status, message for the user or None when rank 0 already gave one, whether it names a log file)."""
    failures = error.failures
    zero = failures.get(0)
    if zero is not None and zero.exitcode in RANK0_EXPLAINED and not any(
            f.exitcode < 0 and f.signal_name() == "SIGKILL" for f in failures.values()):
        # Rank 0 stopped on its own error; a peer that then died by SIGABRT or SIGSEGV was tearing down
        # gloo with rank 0 gone (seen in CI), not the cause. A SIGKILL (OOM killer, kill -9) still is.
        return zero.exitcode, None, False
    # The root cause: a process killed by someone other than the agent, else one that failed on its own.
    ranked = sorted(failures.items(), key=lambda kv: (not (kv[1].exitcode < 0 and kv[1].signal_name() != "SIGTERM"),
                                                      kv[1].exitcode in (-15, PEER_LOST_EXIT), kv[0]))
    rank, failure = ranked[0]
    if failure.exitcode in (WORK_FAILED_EXIT, USAGE_EXIT) and not _printed_an_error(log_dir, failure.local_rank):
        # It raised rank 0's error, marked already reported (zoo.cli prints nothing for those), and exited
        # before torchrun recorded rank 0's own exit: rank 0 has told the user.
        return failure.exitcode, None, False
    named_log = False
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"failed (exit status {failure.exitcode})"
        logs = glob.glob(os.path.join(log_dir, "*", "attempt_*", str(failure.local_rank), "stderr.log"))
        last = [ln for ln in open(logs[0], errors="replace").read().splitlines() if ln.strip()][-1:] if logs else []
        if last:
            how += f": {last[0].strip()}"
        if rank != 0 and logs:
            how += f" (its output: {logs[0]})"
            named_log = True
    return WORK_FAILED_EXIT, (f"Process {rank} of {nproc} {how}, so torchrun stopped the whole run; the last "
                              "finished epoch is saved: run the same command with --resume to continue."), named_log
