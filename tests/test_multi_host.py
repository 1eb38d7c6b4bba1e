"""Multi-instance training on MXNet's parameter server, and managed spot training's interruption, as
AWS's training toolkit runs them: ``run_training_job(instance_count=2)`` on 127.0.0.1 and 127.0.0.2,
and a job killed mid-training that resumes from its checkpoint directory."""

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for
from recsys.sagemaker.training_job import TrainingJobError, run_training_job

pytestmark = pytest.mark.extended  # every test starts several training-toolkit processes: ~45 s in all

ROOT = Path(__file__).resolve().parents[1]
OCT = ROOT / "data" / "sample" / "rees46_2019-Oct_head_0000-0250UTC.csv.gz"


def _processes_of(job_root: Path) -> list:
    """Live processes whose environment names this job's tree (the toolkit, the entry point, and the
    scheduler and servers it started, which inherit that environment)."""
    found, needle = [], str(job_root).encode()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]:
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_two_hosts_train_one_model_on_the_parameter_server(tmp_path):
    """Both hosts succeed, the servers and the scheduler stop by themselves, host 0's model ranks within
    noise of a one-host model, and the workers report their traffic per step."""
    from recsys.prepare import prepare_files
    from recsys.selection import train_and_save_preset

    job = run_training_job({"preset": "side", "epochs": 4}, {"train": [OCT]}, tmp_path / "jobs", job_name="two",
                           instance_count=2, timeout=300, log=lambda _: None)
    m = job.metrics
    assert m["hosts"] == 2 and m["ps_stopped_by_themselves"] is True
    assert _processes_of(tmp_path / "jobs" / "two") == []
    assert sorted(p.name for p in (tmp_path / "jobs" / "two" / "hosts").iterdir()) == ["algo-1", "algo-2"]
    assert not any((tmp_path / "jobs" / "two" / "hosts" / "algo-2" / "model").iterdir())  # host 0 saves alone
    one = train_and_save_preset(prepare_files([OCT], progress=False), tmp_path / "one", "side", progress=False,
                                epochs=4, ctx="cpu")
    assert abs(m["hr_at_10"] - one["hr_at_10"]) < 3 * np.hypot(m["hr_at_10_se"], one["hr_at_10_se"]), (m, one)
    # the traffic each step, as measured by the worker (on the sample a batch touches most of the 685 items)
    assert m["traffic"]["bytes_pulled_per_step"] > 0 and m["traffic"]["bytes_pushed_per_step"] > 0
    assert m["traffic"]["steps"] > 0


def test_a_multi_host_job_that_times_out_leaves_nothing_running(tmp_path):
    with pytest.raises(TrainingJobError, match="timed out after 6 s"):
        run_training_job({"preset": "side", "epochs": 400}, {"train": [OCT]}, tmp_path / "jobs", job_name="slow",
                         instance_count=2, timeout=6, log=lambda _: None)
    assert _processes_of(tmp_path / "jobs" / "slow") == []


def test_a_spot_interruption_resumes_from_the_checkpoint_and_ends_with_the_same_model(tmp_path):
    """Killed (every process of the job, as when the instance is reclaimed) after epoch 2 of 4, run again
    on the same checkpoint directory: it resumes after epoch 2 and ends bitwise equal to a run never
    interrupted (same seed, CPU)."""
    import signal

    hps, channels = {"preset": "side", "epochs": 4}, {"train": [OCT]}
    whole = run_training_job(hps, channels, tmp_path / "jobs", job_name="whole", log=lambda _: None,
                             checkpoint_dir=tmp_path / "ckpt-whole")
    job_root = tmp_path / "jobs" / "spot"

    def reclaim(line):
        if "checkpoint: epoch 2 saved" in line:
            for pid in _processes_of(job_root):
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(TrainingJobError):
        run_training_job(hps, channels, tmp_path / "jobs", job_name="spot", log=reclaim, verbose=True,
                         checkpoint_dir=tmp_path / "ckpt")
    assert (tmp_path / "ckpt").is_dir() and any((tmp_path / "ckpt").iterdir())
    resumed = run_training_job(hps, channels, tmp_path / "jobs", job_name="spot", log=lambda _: None,
                               checkpoint_dir=tmp_path / "ckpt")
    assert any("checkpoint: resumed after epoch 2" in line for line in resumed.logs), resumed.logs[-20:]
    for name in ("model.params", "user_ids.npy", "product_ids.npy", "item_popularity.npy"):
        assert (whole.root / "model" / name).read_bytes() == (resumed.root / "model" / name).read_bytes(), name
    assert resumed.metrics["hr_at_10"] == whole.metrics["hr_at_10"]


def test_sigterm_to_the_parent_of_a_multi_host_job_stops_every_host(tmp_path):
    """Each host runs in its own session (so that its scheduler and servers can be killed as one group):
    a SIGTERM to the process that runs the job (a kernel shut down, a ``kill``) must not leave them
    training without a parent."""
    import signal
    import subprocess
    import sys

    script = ("import sys; from recsys.sagemaker.training_job import run_training_job as r\n"
              "try:\n"
              f"    r({{'preset': 'side', 'epochs': 400}}, {{'train': [{str(OCT)!r}]}}, {str(tmp_path / 'jobs')!r},"
              " job_name='term', instance_count=2, log=lambda l: print(l, flush=True), verbose=True)\n"
              "except Exception as e:\n"
              "    print('ERROR', e, flush=True); sys.exit(3)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    seen = []
    for line in parent.stdout:  # wait until both hosts train
        seen.append(line)
        if "epoch 1/400" in line or len(seen) > 5000:
            break
    job_root = tmp_path / "jobs" / "term"
    assert len(_processes_of(job_root)) >= 2, "".join(seen[-20:])
    parent.send_signal(signal.SIGTERM)
    rest = parent.stdout.read()
    assert parent.wait(timeout=60) == 3, rest[-2000:]
    assert "training job term stopped: this process got SIGTERM" in rest
    wait_for(lambda: _processes_of(job_root) == [], seconds=10)  # the hosts got SIGTERM from the parent
    assert _processes_of(job_root) == []
