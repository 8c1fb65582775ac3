#!/usr/bin/env python3
"""A one-machine stand-in for SLURM's sbatch, squeue, scontrol, scancel and srun (this file, linked
under those names). ``sbatch --parsable`` queues the script's ``--array`` tasks and returns; a
background supervisor per task then runs it with ``SLURM_ARRAY_TASK_ID`` and the other job
variables set, again when it was requeued (``scontrol requeue``) while it ran. ``srun`` runs the
step in its own process group, which ``scancel --signal=SIG ID`` signals, as SLURM does. State lives
in ``$FAKE_SLURM``: queue/<id> (the state squeue prints), requeue/<id>, steps/<id> (the step's
process group), runs.log (one line per task start), calls.log (every command)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM"])
PARTITIONS = os.environ.get("FAKE_SLURM_PARTITIONS", "cpu").split(",")


def log(name: str, line: str) -> None:
    with open(STATE / name, "a") as handle:
        handle.write(line + "\n")


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)", script.read_text(), flags=re.M))
    first, last = map(int, options["array"].split("%")[0].split("-"))
    counter = STATE / "next_job"
    job = int(counter.read_text()) if counter.exists() else 100
    counter.write_text(str(job + 1))
    for task in range(first, last + 1):
        (STATE / "queue" / f"{job}_{task}").write_text("PENDING")
    for task in range(first, last + 1):
        supervisor = subprocess.Popen([sys.executable, __file__, "supervise", str(job), str(task), str(script),
                                       options.get("job-name", "job"), options["output"]],
                                      start_new_session=True, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log("supervisors", str(supervisor.pid))
    print(job)
    return 0


def supervise(job: str, task: str, script: str, name: str, output: str) -> int:
    """Run one array task, again each time it was requeued while it ran."""
    task_id = f"{job}_{task}"
    env = {**os.environ, "SLURM_JOB_ID": str(int(job) * 1000 + int(task)), "SLURM_ARRAY_JOB_ID": job,
           "SLURM_ARRAY_TASK_ID": task, "SLURM_JOB_NAME": name, "SLURM_NTASKS": "1",
           "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
           "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODELIST": "localhost"}
    while True:
        (STATE / "queue" / task_id).write_text("RUNNING")
        log("runs.log", task_id)
        with open(output.replace("%A", job).replace("%a", task), "a") as out:
            subprocess.call(["bash", script], env=env, stdout=out, stderr=subprocess.STDOUT)
        requeue = STATE / "requeue" / task_id
        if not requeue.exists():
            break
        requeue.unlink()
        (STATE / "queue" / task_id).write_text("PENDING")
        time.sleep(0.5)
    (STATE / "queue" / task_id).unlink()
    return 0


def squeue(args: list[str]) -> int:
    for entry in sorted((STATE / "queue").iterdir()):
        print(entry.name, entry.read_text())
    return 0


def scontrol(args: list[str]) -> int:
    if args[:1] == ["requeue"]:
        (STATE / "requeue" / args[1]).touch()
        return 0
    if args[:2] == ["show", "partition"]:
        if args[2] in PARTITIONS:
            print(f"PartitionName={args[2]}")
            return 0
        print(f"Partition {args[2]} not found", file=sys.stderr)
        return 1
    return 1


def scancel(args: list[str]) -> int:
    signum = next(getattr(signal, "SIG" + a.split("=")[1].removeprefix("SIG")) for a in args if a.startswith("--signal"))
    os.killpg(int((STATE / "steps" / args[-1]).read_text()), signum)
    return 0


def srun(args: list[str]) -> int:
    step = subprocess.Popen(args, process_group=0)
    task_id = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    (STATE / "steps" / task_id).write_text(str(step.pid))
    return step.wait()


if __name__ == "__main__":
    for folder in ("queue", "requeue", "steps"):
        (STATE / folder).mkdir(parents=True, exist_ok=True)
    command, args = Path(sys.argv[0]).name, sys.argv[1:]
    if command == "fake_slurm.py":
        command, args = args[0], args[1:]
    if command != "supervise":
        log("calls.log", " ".join([command, *args]))
    sys.exit({"sbatch": sbatch, "squeue": squeue, "scontrol": scontrol, "scancel": scancel, "srun": srun}[command](args)
             if command != "supervise" else supervise(*args))
