"""Several JAX processes on one machine, for the multi-process tests: each process gets its own fake
CPU devices and they join one runtime through jax.distributed on 127.0.0.1 (gloo collectives).

    runs = launch(["train", "--config", cfg], processes=2, devices=4, timeout=240)

Every run is bounded in time; a free port is chosen per launch; when a process fails (or `kill`
fires), the others get `grace` seconds to fail on their own (jlm makes them: jlm.distributed) and
are then killed with their whole process group. Nothing outlives a launch.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class Run:
    process: int
    returncode: int
    output: str  # stdout and stderr together
    killed: bool  # by the harness (a deadline, another process's failure, or `kill`)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               JLM_COMPILATION_CACHE="0", PYTHONUNBUFFERED="1")
    return env


def launch(argv: list[str], *, processes: int, devices: int, timeout: float, cwd: str | Path | None = None,
           per_process: Callable[[int], list[str]] | None = None, grace: float = 60.0,
           kill: tuple[int, Callable[[], bool]] | None = None, poll: float = 0.2) -> list[Run]:
    """Run `jlm ARGV` in `processes` processes of `devices` CPU devices each (one process: no
    jax.distributed at all, the reference layout). `per_process(i)` adds flags to process i (e.g. a
    missing file on one host). `kill=(i, condition)`: SIGKILL process i once condition() holds, as a
    crashed host; the others are then killed too, as a launcher (SLURM, torchrun) does."""
    port = free_port()
    procs, logs = [], []
    for i in range(processes):
        cmd = [sys.executable, "-m", "jlm.cli", *argv]
        if processes > 1:
            cmd += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)]
        cmd += per_process(i) if per_process else []
        log = tempfile.TemporaryFile(mode="w+")
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env_for(devices), stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True))
        logs.append(log)
    killed = [False] * processes
    deadline = time.monotonic() + timeout
    stop_at = None  # once a process failed: when the rest are killed

    def stop(i):
        if procs[i].poll() is None:
            killed[i] = True
            try:
                os.killpg(procs[i].pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if kill is not None and not killed[kill[0]] and procs[kill[0]].poll() is None and kill[1]():
                stop(kill[0])
                stop_at = now  # the survivors would wait for the dead one in their next collective
            if stop_at is None and any(p.poll() not in (None, 0) for p in procs):
                stop_at = now + grace
            if now > deadline or (stop_at is not None and now >= stop_at):
                for i in range(processes):
                    stop(i)
            time.sleep(poll)
    finally:
        for i in range(processes):
            stop(i)
            procs[i].wait()
    runs = []
    for i, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        runs.append(Run(i, p.returncode, log.read(), killed[i]))
        log.close()
    return runs


def check(runs: list[Run]) -> list[Run]:
    """The runs, if every process succeeded; else an AssertionError with each one's output tail."""
    if any(r.returncode != 0 for r in runs):
        raise AssertionError("\n\n".join(f"--- process {r.process}: exit {r.returncode}"
                                         f"{' (killed)' if r.killed else ''}\n{r.output[-4000:]}" for r in runs))
    return runs
