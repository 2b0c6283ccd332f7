"""The processes a multi-process training run was launched for.

`accelerate launch --multi_gpu --num_processes N` starts N processes through torchrun: on GPUs or,
without them, on the CPU over gloo. `accelerate launch --cpu --num_processes N` takes another of
accelerate's launchers, which starts a single process unless it is given an MPI host file, so the
N processes asked for would quietly become one run at an Nth of the batch. `cpu_processes_asked()`
recognises that one process, and `run_as_processes()` starts the N from it with torchrun, as
`--multi_gpu` would have; each of them then trains on the CPU (accelerate's ACCELERATE_USE_CPU).
"""

from __future__ import annotations

import os

from portraitkit.core.errors import PortraitkitError

# Set in every process of a multi-process launch (torchrun, MPI); absent from a lone process.
MULTI_PROCESS_VARIABLES = ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
LAUNCHER_MODULE = "accelerate.commands.launch"


def cpu_processes_asked(environ=None, launcher_argv=None) -> int:
    """How many processes `accelerate launch --cpu --num_processes N` asked for when it started
    this one alone; 1 in every other case. (accelerate sets MASTER_PORT only when N > 1.)"""
    environ = os.environ if environ is None else environ
    if environ.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1", "yes") or "MASTER_PORT" not in environ:
        return 1
    if any(name in environ for name in MULTI_PROCESS_VARIABLES):
        return 1  # already one of several
    launcher_argv = _parent_argv() if launcher_argv is None else launcher_argv
    count, machines = _launch_options(launcher_argv)
    if machines and machines > 1:
        raise PortraitkitError(
            "accelerate's --cpu launcher runs one process per machine without MPI; for several machines give it "
            "an MPI host file (`--mpirun_hostfile`), or train on one machine with `--num_machines 1`")
    if count is None:
        raise PortraitkitError(
            "accelerate's --cpu launcher started one process where several were asked for, and how many could not be "
            "read from its command line; launch with `accelerate launch --multi_gpu --num_processes N -m portraitkit "
            "train ...`, which starts all N on a CPU too")
    return count


def run_as_processes(count: int, argv: list[str]) -> int:
    """Run `python -m portraitkit ARGV` as `count` processes under torchrun's launcher, in this
    process (as accelerate's --multi_gpu launcher runs it: no interpreter started to import torch
    again); the exit status of the first process to fail, or 0."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(["--nnodes", "1", "--nproc_per_node", str(count), "--master_addr",
                                os.environ.get("MASTER_ADDR", "127.0.0.1"), "--master_port", os.environ["MASTER_PORT"],
                                "-m", "portraitkit", *argv])
    try:
        torchrun.run(args)
    except ChildFailedError as error:  # each process has said why on its own stderr
        return error.get_first_failure()[1].exitcode or 1
    return 0


def _parent_argv() -> list[str]:
    import psutil  # accelerate's own dependency

    try:
        return psutil.Process().parent().cmdline()
    except (psutil.Error, AttributeError):  # no parent to read (AttributeError: parent() gave None)
        return []


def _launch_options(launcher_argv: list[str]) -> tuple[int | None, int | None]:
    """--num_processes and --num_machines of an `accelerate launch ...` command line (None: not there)."""
    for index, word in enumerate(launcher_argv):
        # `accelerate launch ...` (the console script) or `python -m accelerate.commands.launch ...`
        if word == LAUNCHER_MODULE or (word == "launch" and index and os.path.basename(launcher_argv[index - 1]).startswith("accelerate")):
            options = launcher_argv[index + 1:]
            break
    else:
        return None, None
    from accelerate.commands.launch import launch_command_parser

    try:
        known, _ = launch_command_parser().parse_known_args(options)
    except SystemExit:  # a command line accelerate itself would have refused
        return None, None
    return known.num_processes, known.num_machines
