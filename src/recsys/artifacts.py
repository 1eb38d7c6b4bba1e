"""A trained model as a directory that a fresh process (or a SageMaker container) can load.

Layout::

    config.json          architecture (MFBlock arguments), hyperparameters, objective
    model.params         the network's parameters (Gluon ``save_parameters``)
    user_ids.npy         raw user id of each dense ``user`` (int64, ascending)
    product_ids.npy      raw product id of each dense ``item`` (int64, ascending)
    item_popularity.npy  training events per item (the fallback ranking)
    model_info.json      versions, data fingerprint, SHA-256 of every file above, metrics

(``model_info.json`` was ``manifest.json`` before: the real SageMaker MXNet serving stack (Multi
Model Server) takes any ``MANIFEST.json``, in any case, in the model directory or one level down
for its own archive manifest and stops at start-up. Old directories still load, and
:func:`info_file` says which name a directory uses.)

:class:`Recommender` answers on **raw** ids:

* ``score(user_ids, product_ids)`` -> float64 array; a pair whose user or product the model
  does not know scores ``NaN`` (never a score from a made-up index); ``known(...)`` says which.
* ``recommend(user_id, k)`` -> the k best products the user has not been excluded from; for
  an unknown user, the k most popular training products, each marked ``"source":
  "popularity"`` with ``score`` ``None``.

Imported by the SageMaker inference container (Python 3.8): NumPy and MXNet only.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
FILES = ("config.json", "model.params", "user_ids.npy", "product_ids.npy", "item_popularity.npy")
INFO_FILE = "model_info.json"
SCORE_CHUNK = 65536  # pairs scored at once
LEGACY_INFO_FILE = "manifest.json"  # read only: MMS mistakes it for its own manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(prepared) -> str:
    """SHA-256 over the id maps and the training interactions."""
    h = hashlib.sha256()
    for arr in (prepared.users["user_id"].to_numpy(np.int64), prepared.products["product_id"].to_numpy(np.int64),
                prepared.train["user"].to_numpy(np.int32), prepared.train["item"].to_numpy(np.int32),
                prepared.train["event_type_digit"].to_numpy(np.int8)):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def save_model(model_dir, net, prepared, hyperparameters: dict | None = None, metrics: dict | None = None) -> Path:
    """Write the model directory for ``net`` trained on ``prepared``."""
    import mxnet

    from . import __version__

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, "architecture": net.config(),
              "hyperparameters": dict(hyperparameters or {})}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    net.save_parameters(str(out / "model.params"))
    np.save(out / "user_ids.npy", prepared.users["user_id"].to_numpy(np.int64))
    np.save(out / "product_ids.npy", prepared.products["product_id"].to_numpy(np.int64))
    np.save(out / "item_popularity.npy",
            np.bincount(prepared.train["item"].to_numpy(), minlength=prepared.n_items).astype(np.float64))
    info = {
        "format_version": FORMAT_VERSION,
        "versions": {"recsys": __version__, "mxnet": mxnet.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "data_fingerprint": data_fingerprint(prepared),
        "n_users": int(prepared.n_users),
        "n_items": int(prepared.n_items),
        "files": {name: _sha256(out / name) for name in FILES},
        "metrics": metrics or {},
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=float) + "\n")
    return out


def info_file(model_dir) -> Path:
    """The directory's ``model_info.json``, or the ``manifest.json`` of a directory saved before the rename."""
    d = Path(model_dir)
    legacy = d / LEGACY_INFO_FILE
    return legacy if legacy.is_file() and not (d / INFO_FILE).is_file() else d / INFO_FILE


def _context_of(net):
    return next(iter(net.collect_params().values())).list_ctx()[0]


class ModelDirError(ValueError):
    """The directory is not a complete, intact model directory."""


def _lookup(sorted_ids: np.ndarray, raw) -> tuple:
    """Dense index of each raw id (ascending map) and whether it is known."""
    raw = np.asarray(raw, dtype=np.int64).reshape(-1)
    pos = np.searchsorted(sorted_ids, raw)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    known = (pos < len(sorted_ids)) & (sorted_ids[pos_c] == raw) if len(sorted_ids) else np.zeros(len(raw), bool)
    return pos_c, known


class Recommender:
    """A loaded model: scores and recommendations on raw ids.

    The towers are independent until the dot product, so scoring is a dot product of two rows. Every item
    vector is computed once at load time. User vectors are too, for the models with a table row per user
    (``MFBlock``, ``SideMFBlock``), and the network is then dropped (``keep_net=False``, the default): its
    parameters would be a second full copy of the model (the user table alone is as large as the user
    vectors: 4.2M users x 64 floats is 1 GiB each), and a serving stack loads one model per worker. A model
    whose user vector comes from the user's stored history (``SequenceMFBlock``:
    ``user_vectors_from_history``) keeps its network, which is small (histories: 25 bytes a user), and
    computes the vectors of each request's users when it scores: 4.2M precomputed 130-wide vectors would
    be 2 GiB a worker. :meth:`user_rows` gives either kind."""

    def __init__(self, net, user_ids: np.ndarray, product_ids: np.ndarray, popularity: np.ndarray,
                 config: dict, info: dict, keep_net: bool = False) -> None:
        import threading

        from .metrics import _run_tower, tower_vectors

        self.user_ids = user_ids
        self.product_ids = product_ids
        self.popularity = popularity
        self.config = config
        self.info = info
        self.lazy_users = bool(getattr(net, "user_vectors_from_history", False))
        self._lock = threading.Lock()  # a hybridised network must not run in two threads at once
        if self.lazy_users:
            self.user_vectors = None
            self.item_vectors = _run_tower(net.item_vectors, len(product_ids), _context_of(net))
            self.net = net
        else:
            self.user_vectors, self.item_vectors = tower_vectors(net, len(user_ids), len(product_ids))
            self.net = net if keep_net else None

    def user_rows(self, users: np.ndarray) -> np.ndarray:
        """The vectors of dense user ids ``users`` (float32, one row each)."""
        users = np.asarray(users, np.int64)
        if not self.lazy_users:
            return self.user_vectors[users]
        from .mx import mx

        uniq, inv = np.unique(users, return_inverse=True)
        with self._lock:
            rows = self.net.user_vectors(mx.nd.array(uniq, ctx=_context_of(self.net), dtype="int64")).asnumpy()
        return rows[inv]

    @classmethod
    def load(cls, model_dir, ctx="auto", verify: bool = True, keep_net: bool = False) -> "Recommender":
        from .model import MFBlock, SideMFBlock
        from .mx import context, gpu_errors

        d = Path(model_dir)
        info_path = info_file(d)
        missing = [name for name in FILES + (info_path.name,) if not (d / name).is_file()]
        if missing:
            raise ModelDirError(f"{d}: not a model directory, missing {', '.join(missing)}")
        info = json.loads(info_path.read_text())
        if verify:
            bad = [name for name, digest in info.get("files", {}).items() if _sha256(d / name) != digest]
            if bad:
                raise ModelDirError(f"{d}: files changed since they were saved: {', '.join(bad)}")
        config = json.loads((d / "config.json").read_text())
        arch = config["architecture"]
        if arch.get("kind") == "side_mf":
            net = SideMFBlock(**{k: v for k, v in arch.items() if k != "kind"})
        elif arch.get("kind") == "sequence":
            from .sequence import SequenceMFBlock

            net = SequenceMFBlock(**{k: v for k, v in arch.items() if k != "kind"})
        else:
            net = MFBlock(arch["max_users"], arch["max_items"], arch["num_emb"], arch["dropout_p"])
        ctx = context(ctx)
        with gpu_errors(ctx):
            net.load_parameters(str(d / "model.params"), ctx=ctx)
            net.hybridize(static_alloc=True)
            return cls(net, np.load(d / "user_ids.npy"), np.load(d / "product_ids.npy"),
                       np.load(d / "item_popularity.npy"), config, info, keep_net=keep_net)

    def known(self, user_ids, product_ids) -> np.ndarray:
        _, ku = _lookup(self.user_ids, user_ids)
        _, kp = _lookup(self.product_ids, product_ids)
        return ku & kp

    def score(self, user_ids, product_ids) -> np.ndarray:
        """Scores of raw (user_id, product_id) pairs (same length); NaN where either is unknown."""
        u, ku = _lookup(self.user_ids, user_ids)
        p, kp = _lookup(self.product_ids, product_ids)
        if len(u) != len(p):
            raise ValueError(f"{len(u)} user ids but {len(p)} product ids")
        out = np.full(len(u), np.nan)
        ok = np.flatnonzero(ku & kp)
        for s in range(0, len(ok), SCORE_CHUNK):  # bounded temporaries: two (chunk x dims) blocks
            idx = ok[s:s + SCORE_CHUNK]
            out[idx] = np.einsum("ij,ij->i", self.user_rows(u[idx]), self.item_vectors[p[idx]], dtype=np.float64)
        return out

    def recommend(self, user_id, k: int = 10, exclude=()) -> list:
        """The ``k`` best products for a raw ``user_id`` (see the module doc for unknown users)."""
        k = max(0, int(k))
        u, known = _lookup(self.user_ids, [user_id])
        pos, excluded = _lookup(self.product_ids, list(exclude))
        skip = pos[excluded]
        if known[0]:
            scores = self.item_vectors @ self.user_rows(u[:1])[0]
            source = "model"
        else:
            scores = self.popularity.astype(np.float64)
            source = "popularity"
        scores = scores.astype(np.float64)
        scores[skip] = -np.inf
        order = np.lexsort((np.arange(len(scores)), -scores))[:k]
        order = order[np.isfinite(scores[order])]
        return [{"product_id": int(self.product_ids[i]), "score": float(scores[i]) if source == "model" else None,
                 "rank": r + 1, "source": source} for r, i in enumerate(order)]
