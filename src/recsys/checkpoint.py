"""Checkpoints after every epoch, so that a stopped training job (a managed spot instance taken back)
resumes where it stopped and ends with the same model as a run that was never stopped.

A checkpoint directory holds one ``epoch-NNNN/`` per finished epoch (the newest two are kept):

    state.json        the epoch, the settings it was trained with, the training history so far,
                      and each optimizer's update counters (Adam's bias correction needs them)
    model.params      the network's parameters
    tables.nd         the row-updated tables' optimizer state (``recsys.training._RowTable``)
    trainer.states    the Gluon ``Trainer``'s optimizer state (the dense parameters)

An epoch directory is written under a temporary name and renamed when complete, so a job killed while
writing leaves the previous checkpoint intact. Resuming needs the same settings: a checkpoint of other
settings (another preset, another seed) is an error, not a silent restart. The NumPy generator's state
(shuffling, negatives) is saved with each epoch, and MXNet's (dropout) is seeded from ``(seed, epoch)`` at
the start of each epoch, so epoch ``k`` draws the same numbers whether or not the run was resumed before it.

SageMaker syncs ``/opt/ml/checkpoints`` with ``checkpoint_s3_uri`` and restores it into a restarted job;
the entry point checkpoints there when the directory exists.

Imported by the SageMaker training container (Python 3.8).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

KEEP = 2


def epoch_seed(seed: int, epoch: int) -> int:
    """MXNet's seed for ``epoch`` (0-based) of a run seeded with ``seed``."""
    return (int(seed) * 1_000_003 + 7919 * (epoch + 1)) % (2 ** 31 - 1)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


class CheckpointMismatch(ValueError):
    """The checkpoint directory holds a run of other settings."""


class Checkpoints:
    """``Checkpoints(directory, settings)``: ``latest()`` -> the newest finished epoch's state or None;
    ``save(epoch, net, tables, trainer, history, rng)`` after each epoch; ``restore(state, ...)`` the same."""

    def __init__(self, directory, settings: dict, log=None) -> None:
        self.directory = Path(directory)
        self.settings = _plain(settings)
        self.log = log

    def _epochs(self) -> list:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith("epoch-")
                      and (p / "state.json").is_file())

    def latest(self):
        """The newest complete checkpoint's ``state.json`` (with its ``path``), or None."""
        found = self._epochs()
        if not found:
            return None
        state = json.loads((found[-1] / "state.json").read_text())
        if state.get("settings") != self.settings:
            diff = sorted(k for k in set(state.get("settings", {})) | set(self.settings)
                          if state.get("settings", {}).get(k) != self.settings.get(k))
            raise CheckpointMismatch(f"{self.directory} holds a checkpoint of other settings ({', '.join(diff)}): "
                                     "use an empty checkpoint directory, or the settings it was made with")
        state["path"] = str(found[-1])
        return state

    def save(self, epoch: int, net, tables=(), trainer=None, history=None, rng=None) -> Path:
        from .mx import mx

        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"epoch-{epoch:04d}"
        tmp = self.directory / f".epoch-{epoch:04d}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        net.save_parameters(str(tmp / "model.params"))
        arrays, counters = {}, []
        for t, table in enumerate(tables):
            for s, arr in enumerate(_flat(table.state)):
                arrays[f"{t}:{s}"] = arr
            counters.append({"num_update": table.optimizer.num_update,
                             "index_update_count": {str(k): v for k, v in table.optimizer._index_update_count.items()}})
        if arrays:
            mx.nd.save(str(tmp / "tables.nd"), arrays)
        if trainer is not None:
            trainer.save_states(str(tmp / "trainer.states"))
        state = {"epoch": int(epoch), "settings": self.settings, "history": _plain(history or []), "tables": counters,
                 "rng": _plain(rng.bit_generator.state) if rng is not None else None}
        (tmp / "state.json").write_text(json.dumps(state, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self._epochs()[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        if self.log is not None:
            self.log(f"checkpoint: epoch {epoch} saved to {final}")
        return final

    def restore(self, state: dict, net, tables=(), trainer=None, rng=None) -> int:
        """Load ``state``'s checkpoint into the network (in place), the tables' optimizer state, the trainer
        and the NumPy generator ``rng``; returns its epoch."""
        from .mx import mx

        path = Path(state["path"])
        ctx = next(iter(net.collect_params().values())).list_ctx()
        net.load_parameters(str(path / "model.params"), ctx=ctx)
        arrays = mx.nd.load(str(path / "tables.nd")) if (path / "tables.nd").is_file() else {}
        for t, table in enumerate(tables):
            for s, arr in enumerate(_flat(table.state)):
                arrays[f"{t}:{s}"].copyto(arr)
            counters = state["tables"][t]
            table.optimizer.num_update = counters["num_update"]
            table.optimizer._index_update_count = {int(k): v for k, v in counters["index_update_count"].items()}
        if trainer is not None and (path / "trainer.states").is_file():
            trainer.load_states(str(path / "trainer.states"))
        if rng is not None and state.get("rng"):
            rng.bit_generator.state = state["rng"]
        if self.log is not None:
            self.log(f"checkpoint: resumed after epoch {state['epoch']} from {path}")
        return int(state["epoch"])


def _flat(state) -> list:
    if state is None:
        return []
    if isinstance(state, (tuple, list)):
        return [a for s in state for a in _flat(s)]
    return [state]

