"""The same training on several processes: torchrun's own launcher, gloo on CPU (marker dist)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from imgclf.cli.main import main
from imgclf.distributed import expand_hostlist, slurm_environment
from serving import free_port

pytestmark = pytest.mark.dist

EPOCHS = "15"


def _torchrun(output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "imgclf",
            "train", "digits", "--model", "simple_cnn", "--epochs", EPOCHS, "--output", str(output), "--json",
            *extra]  # fmt: skip


def _state_epoch(state: Path) -> int:
    try:
        with safe_open(str(state), framework="pt") as file:
            return int(json.loads(file.metadata()["imgclf_training_state"])["epoch"])
    except Exception:  # not written yet, or being replaced
        return 0


def test_two_gloo_processes_match_one_and_write_one_bundle(tmp_path: Path, capsys):
    assert main(["train", "digits", "--model", "simple_cnn", "--epochs", EPOCHS, "--output", str(tmp_path / "one"),
                 "--json"]) == 0  # fmt: skip
    single = json.loads(capsys.readouterr().out)
    finished = subprocess.run(_torchrun(tmp_path / "two"), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    two = json.loads(finished.stdout)  # exactly one JSON answer (two would not parse): only rank 0 prints
    assert abs(two["metrics"]["test_accuracy"] - single["metrics"]["test_accuracy"]) <= 0.02
    description = json.loads((tmp_path / "two" / "model.json").read_text())
    assert description["distributed"]["processes"] == 2 and description["distributed"]["global_batch"] == 256
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.suffix != ".html") == [
        ".imgclf-files.json", "centroids.safetensors", "config.yaml", "metrics.csv", "metrics.json", "model.json",
        "model.safetensors", "training_state.prev.safetensors", "training_state.safetensors",
    ]  # fmt: skip
    assert "distributed: 2 processes (gloo), global batch 128 x 2 = 256" in finished.stderr
    train = description["data"]["sizes"]["train"]  # the whole split, as one process would record it
    assert train == json.loads((tmp_path / "one" / "model.json").read_text())["data"]["sizes"]["train"]
    assert finished.stderr.count(f"this process's share, {train // 2:,} of {train:,}") == 1  # rank 0 prints


def _wait_for_group_to_exit(group: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@pytest.mark.slow  # the default suite keeps one multi-process run: the one above
def test_a_two_process_checkpoint_resumes_with_one_process(tmp_path: Path, capsys):
    output = tmp_path / "run"
    process = subprocess.Popen(_torchrun(output), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    state = output / "training_state.safetensors"
    deadline = time.monotonic() + 300
    while _state_epoch(state) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers
    process.wait()
    _wait_for_group_to_exit(process.pid)  # a worker holds the output's lock until it is gone
    assert not (output / "model.safetensors").exists() and _state_epoch(state) >= 3
    capsys.readouterr()
    assert main(["train", "digits", "--resume", "--output", str(output), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == int(EPOCHS) and result["metrics"]["test_accuracy"] >= 0.9
    description = json.loads((output / "model.json").read_text())
    assert description["distributed"]["processes"] == 1


def test_two_nodes_on_one_machine_train_as_one_group(tmp_path: Path):
    """``torchrun --nnodes 2`` twice, the rendezvous on 127.0.0.1: the multi-machine command of the
    README, with both "machines" here."""
    port = str(free_port())
    commands = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                 f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "imgclf", "train",
                 "digits", "--model", "simple_cnn", "--epochs", "2", "--output", str(tmp_path / "nodes"), "--json"]
                for rank in (0, 1)]  # fmt: skip
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in commands]  # fmt: skip
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    description = json.loads((tmp_path / "nodes" / "model.json").read_text())
    assert description["distributed"]["processes"] == 2
    assert json.loads(outputs[0][0])["bundle"] == str(tmp_path / "nodes") and not outputs[1][0].strip()


def test_slurm_variables_become_torchruns():
    step = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
            "SLURM_STEP_NODELIST": "gpu[07-09,12]", "SLURM_STEP_TASKS_PER_NODE": "2(x4)"}  # fmt: skip
    assert slurm_environment(step) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                                       "MASTER_ADDR": "gpu07", "MASTER_PORT": "29742"}  # fmt: skip
    assert slurm_environment({**step, "MASTER_ADDR": "head", "MASTER_PORT": "1234"})["MASTER_ADDR"] == "head"
    assert slurm_environment({**step, "RANK": "0", "WORLD_SIZE": "8"}) == {}  # torchrun's own win
    assert slurm_environment({"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) == {}  # a batch script: one process
    assert expand_hostlist("a[1-2]b,login,n[098-100]") == ["a1b", "a2b", "login", "n098", "n099", "n100"]
