"""Checkpoints every epoch and resume: a run stopped after epoch k and started again on the same
checkpoint directory ends with exactly the model of a run that was never stopped (same seed, CPU)."""

import json

import numpy as np
import pytest

from conftest import OCT
from recsys.checkpoint import CheckpointMismatch
from recsys.prepare import prepare_files
from recsys.training import fit, fit_side


@pytest.fixture(scope="module")
def prepared():
    return prepare_files([OCT], progress=False)


class Stop(Exception):
    pass


def stop_after(k):
    def on_epoch(epoch, net):
        if epoch == k:
            raise Stop()  # what a spot interruption looks like to the loop: it never comes back
    return on_epoch


def params(net):
    return {k.split("_", 1)[-1]: v.data().asnumpy() for k, v in net.collect_params().items()}


TRAINERS = {
    "seed model (SGD momentum, dropout)": (lambda p, **kw: fit(p, progress=False, log=lambda _: None, **kw).net,
                                           {"epochs": 3}),
    "BPR with Adam rows": (lambda p, **kw: fit(p, progress=False, log=lambda _: None, **kw).net,
                           {"epochs": 3, "objective": "implicit", "opt": "adam", "lr": 0.01}),
    "SideMFBlock": (lambda p, **kw: fit_side(p, progress=False, **kw)[0], {"epochs": 4}),
}


@pytest.mark.parametrize("name", list(TRAINERS))
def test_a_run_stopped_and_resumed_ends_with_the_uninterrupted_model(prepared, tmp_path, name):
    train, kw = TRAINERS[name]
    whole = params(train(prepared, **kw))
    with pytest.raises(Stop):
        train(prepared, checkpoint_dir=tmp_path, on_epoch=stop_after(2), **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001", "epoch-0002"]
    resumed = params(train(prepared, checkpoint_dir=tmp_path, **kw))
    assert resumed.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)
    last = kw["epochs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"epoch-{last - 1:04d}", f"epoch-{last:04d}"]  # the newest two


def test_resume_starts_after_the_checkpoint_and_keeps_the_history(prepared, tmp_path):
    with pytest.raises(Stop):
        fit(prepared, progress=False, log=lambda _: None, epochs=3, checkpoint_dir=tmp_path, on_epoch=stop_after(2))
    seen = []
    result = fit(prepared, progress=False, log=lambda _: None, epochs=3, checkpoint_dir=tmp_path,
                 on_epoch=lambda e, net: seen.append(e))
    assert seen == [3]  # only the missing epoch was trained
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_a_checkpoint_of_other_settings_is_refused(prepared, tmp_path):
    with pytest.raises(Stop):
        fit(prepared, progress=False, log=lambda _: None, epochs=3, checkpoint_dir=tmp_path, on_epoch=stop_after(1))
    with pytest.raises(CheckpointMismatch, match="other settings .*lr"):
        fit(prepared, progress=False, log=lambda _: None, epochs=3, lr=0.05, checkpoint_dir=tmp_path)


def test_a_checkpoint_cut_short_while_written_is_ignored(prepared, tmp_path):
    with pytest.raises(Stop):
        fit(prepared, progress=False, log=lambda _: None, epochs=3, checkpoint_dir=tmp_path, on_epoch=stop_after(1))
    (tmp_path / ".epoch-0002.partial").mkdir()  # a job killed while writing epoch 2
    (tmp_path / ".epoch-0002.partial" / "model.params").write_bytes(b"cut")
    seen = []
    fit(prepared, progress=False, log=lambda _: None, epochs=3, checkpoint_dir=tmp_path,
        on_epoch=lambda e, net: seen.append(e))
    assert seen == [2, 3]
    state = json.loads((tmp_path / "epoch-0003" / "state.json").read_text())
    assert state["epoch"] == 3 and state["settings"]["epochs"] == 3
