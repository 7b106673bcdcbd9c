"""Several processes as one JAX runtime (`jax.distributed`): joining it, and failing together.

Every process runs the same `jlm train` / `jlm judge` command with its own `--process-id` (or none of
the three flags under SLURM, Open MPI or a TPU pod, where `--distributed` lets JAX read them from the
environment). On CPU the processes talk through gloo, so the whole path runs on one machine with fake
devices (tests/multihost.py).

A multi-process run must not hang when one process is wrong. Three rules:
- joining is bounded: a process that cannot reach all the others within `--join-timeout` seconds
  stops with one line saying so (JAX itself would abort with a C++ stack trace);
- the flags agree: a process whose `--num-processes` is not the runtime's stops, and so do the others;
- inputs fail together: `together(what)` runs a block on every process (reading the data, say); if it
  raises on any process, every process raises, naming the process and its error, instead of the
  healthy ones waiting forever in their first collective.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

JOIN_TIMEOUT_S = 300  # JAX's own default
# How long a process waits for the others to finish a `together` block (a share of the judging, say,
# which can take hours). A process that dies is noticed sooner, by JAX's heartbeats (100 s), which
# stop the whole runtime; this bound is for one that hangs.
REPORT_TIMEOUT_S = 24 * 3600


class DistributedError(RuntimeError):
    """The processes of a run disagree, or one of them failed or never came."""


def add_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("several processes (run the same command in every process)")
    g.add_argument("--distributed", action="store_true",
                   help="join a multi-process JAX runtime; SLURM, Open MPI and TPU pods are detected, "
                        "elsewhere give the three flags below")
    g.add_argument("--coordinator", help="HOST:PORT of process 0 (implies --distributed)")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)
    g.add_argument("--join-timeout", type=int, default=JOIN_TIMEOUT_S,
                   help="seconds to wait for every process to join before giving up")


def requested(args: argparse.Namespace) -> bool:
    return bool(args.distributed or args.coordinator)


def initialize(args: argparse.Namespace) -> None:
    """Join the runtime the flags describe (before anything touches a device), then check that the
    processes agree on its size."""
    import jax

    # CPU devices have no cross-process collectives unless one is chosen; GPUs and TPUs ignore this
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = args.coordinator or "the coordinator the environment names"
    me = "this process" if args.process_id is None else f"process {args.process_id}"

    def give_up():
        print(f"error: {me} could not join {args.num_processes or 'the other'} processes at {where} within "
              f"{args.join_timeout} s: a process never started or cannot reach the coordinator, or the processes "
              "were given different --coordinator / --num-processes", file=sys.stderr, flush=True)
        os._exit(2)  # the join blocks in C++ (with the GIL released): nothing else can stop it cleanly

    watchdog = threading.Timer(args.join_timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id,
                                   initialization_timeout=args.join_timeout + 60)  # the watchdog speaks first
    finally:
        watchdog.cancel()
    with together("checking --num-processes"):
        if args.num_processes is not None and args.num_processes != jax.process_count():
            raise DistributedError(f"--num-processes {args.num_processes}, but {jax.process_count()} processes "
                                   f"joined at {where}")


_calls = itertools.count()  # every process makes the same `together` calls in the same order


@contextmanager
def together(what: str, timeout_s: int = REPORT_TIMEOUT_S) -> Iterator[None]:
    """Run the block on every process; if it raises anywhere, it raises everywhere.

    The process where it failed re-raises its own exception; the others raise DistributedError naming
    that process and its message. One process: just the block."""
    import jax

    if jax.process_count() == 1:
        yield
        return
    from jax._src import distributed  # the coordination service's key-value store (as orbax uses it)

    client = distributed.global_state.client
    key = f"jlm/together/{next(_calls)}"
    me = jax.process_index()
    try:
        yield
    except BaseException as e:
        client.key_value_set(f"{key}/{me}", f"{type(e).__name__}: {e}".splitlines()[0] or type(e).__name__)
        raise
    client.key_value_set(f"{key}/{me}", "")
    for other in range(jax.process_count()):
        if other == me:
            continue
        try:
            problem = client.blocking_key_value_get(f"{key}/{other}", timeout_s * 1000)
        except Exception:  # noqa: BLE001 - JAX raises its own status errors here
            raise DistributedError(f"process {other} did not finish {what} within {timeout_s} s "
                                   "(it may have crashed: see its output)") from None
        if problem:
            raise DistributedError(f"process {other} failed {what}: {problem}")


def barrier(what: str, timeout_s: int = REPORT_TIMEOUT_S) -> None:
    """Wait until every process gets here (or one fails on the way: see `together`)."""
    with together(what, timeout_s):
        pass
