"""Training: the seed's loop, made correct, fast and measurable.

``fit(prepared, ...)`` trains an :class:`~recsys.model.MFBlock` with the seed's defaults (SGD,
lr 0.02, momentum 0.9, wd 0, batch 1024, 64 dims, Xavier(magnitude=60), dropout 0.5) and
returns the network and a per-epoch history with the training MSE and the **test** MSE (the
seed's "test" iterator was built from the training set). Every row is seen once per epoch:
the last batch is simply smaller (the seed's ``last_batch='rollover'`` plus a reshape to a full
batch in ``eval_net`` broke on it).

Objectives:

* ``"event_score"`` (default, the seed's): L2 loss against ``event_type_digit`` (1..4).
* ``"implicit"``: BPR (Rendle et al. 2009) on the distinct (user, item) training pairs, one
  uniformly sampled negative item per positive. The seed's objective only ever sees observed
  events, whose labels are 1 for almost all of them (views), so it never learns what a user
  does *not* interact with and cannot rank; BPR learns exactly the ordering that HR@K and
  NDCG@K measure, needs one negative per positive (cheaper than BCE with several) and has no
  probability calibration to get right, which ranking does not need.

Embedding updates (``update="rows"``, the default). For each batch the kit gathers the rows
of the users and items in it (once each), runs the network on those rows, and applies
MXNet's own optimizer (``mx.optimizer.create(opt, ...)``) to just those rows and their
optimizer state, then writes them back. The cost of a step depends on the batch, not on the
size of the tables. Gluon's ``Embedding(sparse_grad=True)`` gives row-sparse gradients too,
but its CPU backward still walks a flag array of ``num_rows`` per step; measured, that halves
the throughput at 1M users.

How this differs from the seed's dense momentum SGD: with dense gradients every row's
momentum decays at every step and keeps moving rows that were not in the batch; with row
updates ("lazy" updates, as MXNet's own ``lazy_update=True``) a row's momentum and weight
decay change only when the row is in a batch. Without momentum and weight decay the two are
the same update (a test checks it); with the seed's momentum 0.9 the trajectories differ
slightly, and notebook 02 shows the results are comparable. ``update="trainer"`` runs the plain
Gluon ``Trainer`` over all parameters (dense or row-sparse gradients, as the block was built).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import numpy as np

from . import mx as _mx
from .constants import DEFAULT_SEED, ITEM, LABEL, USER
from .model import MFBlock, Towers, build
from .prepare import side_information
from .checkpoint import epoch_seed
from .pairs import distinct_pairs
from .distributed import Cluster
from .presets import schedule
from .progress import progress_bar

mx = _mx.mx
nd = mx.nd
autograd = mx.autograd
gluon = mx.gluon

OBJECTIVES = ("event_score", "implicit")
EVAL_BATCH = 65536
#: Batches whose indices are prepared in one go: one host->device copy per chunk, not per batch
#: (each ``nd.array`` waits for the engine, which would serialise every step).
BATCHES_PER_CHUNK = 256


class OneChunkBehind:
    """The summed loss of an epoch's chunks, waited for one chunk late: MXNet runs ahead asynchronously, so
    the host prepares chunk k+1 while the engine trains chunk k; at most two chunks' inputs are held at
    once, and the bar counts examples trained, not queued. ``add`` right after a chunk is queued; ``finish``
    once the epoch's last chunk is, for the epoch's summed loss."""

    def __init__(self, bar) -> None:
        self.bar, self.loss, self._pending = bar, 0.0, None

    def add(self, total, count) -> None:
        """``total``: the chunk's summed loss (an NDArray the engine fills); ``count``: what the bar advances."""
        self._settle()
        self._pending = (total, count)

    def finish(self) -> float:
        self._settle()
        return self.loss

    def _settle(self) -> None:
        if self._pending is not None:
            total, count = self._pending
            self.loss += float(total.asscalar())
            self.bar.update(count)
            self._pending = None
#: The per-epoch train and test MSE are computed on a seeded sample of at most this many rows of each
#: (every row below that): an epoch's evaluation costs the same on 3k rows and on 100M.
MSE_EVAL_ROWS = 1_000_000


def _checkpoints(directory, cfg, log):
    """The run's :class:`~recsys.checkpoint.Checkpoints` (its settings: the config as trained, but the device)."""
    if directory is None:
        return None
    from .checkpoint import Checkpoints

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "ctx"}
    return Checkpoints(directory, {"kind": type(cfg).__name__, **settings}, log=log)


def log_stderr(line: str) -> None:
    """The default for epoch lines: they carry timings, so they go to stderr, beside the progress bars."""
    print(line, file=sys.stderr, flush=True)


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number, not {value!r}")


@dataclasses.dataclass
class TrainConfig:
    """Hyperparameters; the defaults are the seed's."""

    epochs: int = 3
    num_embeddings: int = 64
    batch_size: int = 1024
    opt: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    wd: float = 0.0
    dropout: float = 0.5
    init_magnitude: float = 60.0
    objective: str = "event_score"
    ctx: str = "auto"
    seed: int = DEFAULT_SEED
    update: str = "rows"
    #: "mean": embedding rows get the batch-mean gradient, like every other parameter (the
    #: seed's ``trainer.step(batch_size)``); "sum": each row gets the sum of its own examples'
    #: gradients, i.e. the step per-example SGD would take, whatever the batch size.
    embedding_grad: str = "mean"
    #: Apply :mod:`recsys.presets`' epochs and batch-size rules to the number of training examples
    #: (the ``implicit`` preset does; the seed's settings are used as they are).
    scale_epochs: bool = False
    scale_batch: bool = False

    def validate(self) -> "TrainConfig":
        for name in ("epochs", "batch_size", "num_embeddings", "seed"):
            _check_int(name, getattr(self, name))
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.update not in ("rows", "trainer"):
            raise ValueError("update must be 'rows' or 'trainer'")
        if self.embedding_grad not in ("mean", "sum"):
            raise ValueError("embedding_grad must be 'mean' or 'sum'")
        if self.embedding_grad == "sum" and self.update != "rows":
            raise ValueError("embedding_grad='sum' needs update='rows'")
        if self.epochs < 0 or self.batch_size < 1 or self.num_embeddings < 1:
            raise ValueError("epochs >= 0, batch_size >= 1 and num_embeddings >= 1 are required")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        for name, ok, rule in (("lr", self.lr >= 0, ">= 0"), ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                               ("wd", self.wd >= 0, ">= 0"), ("init_magnitude", self.init_magnitude > 0, "> 0")):
            value = getattr(self, name)
            if not (math.isfinite(value) and ok):  # NaN fails every comparison above too
                raise ValueError(f"{name} must be a finite number {rule}, not {value}")
        return self

    def optimizer_params(self) -> dict:
        params = {"learning_rate": self.lr, "wd": self.wd}
        if self.opt.lower() in ("sgd", "nag"):
            params["momentum"] = self.momentum
        return params


#: The hyperparameters the command line and the SageMaker entry point pass to :func:`fit`.
HYPERPARAMETERS = ("epochs", "num_embeddings", "batch_size", "opt", "lr", "momentum", "wd", "dropout",
                   "init_magnitude", "objective", "embedding_grad", "seed")


@dataclasses.dataclass
class FitResult:
    net: MFBlock
    history: list  # one dict per epoch
    config: TrainConfig
    train_rows_per_second: float

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}


class _RowTable:
    """An embedding table updated row-block by row-block with an MXNet optimizer: ``gather(rows)`` takes
    a batch's distinct rows as a block the network runs on; ``update`` applies the optimizer to that
    block and the rows' gathered optimizer state, and writes both back. (MXNet's own lazy kernels for a
    row-sparse gradient on a dense table do the same update, but measured 1.7x slower for Adam on a
    1M-row table.)"""

    def __init__(self, param, opt_name: str, opt_params: dict, index: int) -> None:
        self.weight = param.data()
        self.optimizer = mx.optimizer.create(opt_name, **opt_params)
        self.index = index
        self.state = self.optimizer.create_state(index, self.weight)

    def gather(self, rows_nd):
        block = nd.take(self.weight, rows_nd)
        block.attach_grad()
        return block

    def update(self, rows_nd, block, grad_scale: int) -> None:
        """Apply the optimizer to the rows' block with gradient ``block.grad / grad_scale``."""
        self.optimizer.rescale_grad = 1.0 / grad_scale
        state = _take_state(self.state, rows_nd)
        self.optimizer.update(self.index, block, block.grad, state)
        _scatter(self.weight, rows_nd, block)
        _put_state(self.state, rows_nd, state)


def _scatter(table, rows, block) -> None:
    """``table[rows] = block`` in place, without NDArray.__setitem__'s indexing overhead."""
    nd._internal._scatter_set_nd(lhs=table, rhs=block, indices=rows.reshape((1, -1)), shape=table.shape, out=table)


def _take_state(state, rows):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return type(state)(_take_state(s, rows) for s in state)
    return nd.take(state, rows)


def _put_state(state, rows, block) -> None:
    if state is None:
        return
    if isinstance(state, (tuple, list)):
        for s, b in zip(state, block):
            _put_state(s, rows, b)
        return
    _scatter(state, rows, block)


def predict(net: MFBlock, users: np.ndarray, items: np.ndarray, ctx=None, batch: int = EVAL_BATCH) -> np.ndarray:
    """Scores of ``(users, items)`` dense-id pairs, in inference mode (no dropout)."""
    ctx = ctx or net.collect_params()[net.user_embeddings.weight.name].list_ctx()[0]
    out = np.empty(len(users), np.float32)
    for s in range(0, len(users), batch):
        u = nd.array(users[s:s + batch], ctx=ctx)
        i = nd.array(items[s:s + batch], ctx=ctx)
        out[s:s + batch] = net(u, i).asnumpy()
    return out


def mse(net: MFBlock, frame, ctx=None, rows: np.ndarray | None = None) -> float:
    """Mean squared error of the network against ``event_type_digit`` on ``frame``'s rows (or on the
    positions ``rows`` of them)."""
    users, items, labels = frame[USER].to_numpy(), frame[ITEM].to_numpy(), frame[LABEL].to_numpy()
    if rows is not None:
        users, items, labels = users[rows], items[rows], labels[rows]
    if len(users) == 0:
        return float("nan")
    pred = predict(net, users, items, ctx)
    return float(np.mean((pred.astype(np.float64) - labels) ** 2))


def eval_rows(n: int, seed: int, limit: int = MSE_EVAL_ROWS):
    """Every row (None) up to ``limit``, else a seeded sorted sample of ``limit`` row positions."""
    if n <= limit:
        return None
    return np.sort(np.random.default_rng([seed, 7]).choice(n, limit, replace=False))


def fit(prepared, progress: bool = True, net: MFBlock | None = None, log=log_stderr, on_epoch=None, train=None,
        checkpoint_dir=None, cluster=None, **overrides) -> FitResult:
    """Train on ``prepared.train`` (or ``train``); evaluate MSE on train and test after every epoch (on
    at most :data:`MSE_EVAL_ROWS` rows of each). With ``progress``, a bar per epoch with its ETA
    (stderr) and one line per epoch through ``log`` (default: stderr). ``on_epoch(epoch, net)`` runs
    after every epoch (the validation protocol's checkpoints). With ``scale_epochs`` / ``scale_batch``, the
    epochs and batch size actually used (:func:`recsys.presets.schedule`) are in the result's ``config``.
    ``checkpoint_dir`` (:mod:`recsys.checkpoint`): save every epoch there and resume from the newest one
    it holds (of the same settings). ``cluster`` (:class:`recsys.distributed.Cluster`): a worker of a
    multi-instance job trains its shard on the parameter servers; the first host gets the whole model."""
    cfg = TrainConfig(**overrides).validate()
    ctx = _mx.context(cfg.ctx)
    if train is not None:
        prepared = dataclasses.replace(prepared, train=train)
    with _mx.gpu_errors(ctx):  # an unsupported GPU fails with the guard's message, not MXNet's
        return _fit(prepared, cfg, ctx, progress, net, log, on_epoch, checkpoint_dir, cluster)


def _fit(prepared, cfg: TrainConfig, ctx, progress: bool, net: MFBlock | None, log=log_stderr, on_epoch=None,
         checkpoint_dir=None, cluster=None) -> FitResult:
    rng = np.random.default_rng(cfg.seed)
    mx.random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if net is None:
        net = build(prepared.n_users, prepared.n_items, cfg.num_embeddings, cfg.dropout, ctx=ctx,
                    init_magnitude=cfg.init_magnitude, sparse_grad=True)
    train, test = prepared.train, prepared.test
    users = train[USER].to_numpy()
    items = train[ITEM].to_numpy()
    labels = train[LABEL].to_numpy().astype(np.float32)
    if cfg.objective == "implicit":
        users, items = distinct_pairs(users, items, prepared.n_items)
        labels = np.ones(len(users), np.float32)
    n = len(users)
    epochs, batch_size = schedule(cfg.epochs, cfg.batch_size, n, cfg.scale_epochs, cfg.scale_batch)
    cfg = dataclasses.replace(cfg, epochs=epochs, batch_size=batch_size)
    train_rows, test_rows = eval_rows(len(train), cfg.seed), eval_rows(len(test), cfg.seed)
    cluster = cluster if cluster is not None else Cluster()
    step = _Stepper(net, cfg, ctx, prepared.n_items, rng, cluster)
    history, seconds_total, rows_total, start = [], 0.0, 0, 0
    if cluster.distributed and checkpoint_dir is not None:
        raise ValueError("checkpoints need one instance: on several, the optimizer state lives on the parameter servers")
    checkpoints = _checkpoints(checkpoint_dir, cfg, log)
    state = checkpoints.latest() if checkpoints is not None else None
    if state is not None:
        start = checkpoints.restore(state, net, step.tables, step.trainer, rng)
        history = list(state["history"])
    with progress_bar(total=n * (cfg.epochs - start), unit="row", unit_scale=True, desc="train",
                      enabled=progress) as bar:
        for epoch in range(start, cfg.epochs):
            bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}", refresh=False)
            mx.random.seed(epoch_seed(cfg.seed, epoch))  # dropout: the same masks whether resumed or not
            order = rng.permutation(n)  # every host draws the same permutation; each trains its shard
            batches = cluster.shard(order, cfg.batch_size)
            mine = sum(len(b) for b in batches)
            chunks = OneChunkBehind(bar)
            t0 = time.perf_counter()
            for c in range(0, len(batches), BATCHES_PER_CHUNK):
                part = batches[c:c + BATCHES_PER_CHUNK]
                chunks.add(step.chunk(users, items, labels, part), sum(len(b) for b in part) * (n / max(mine, 1)))
            loss_sum = chunks.finish()
            nd.waitall()
            seconds = time.perf_counter() - t0
            seconds_total += seconds
            rows_total += mine
            if cluster.distributed:
                cluster.steps += len(batches)
                if cluster.is_first:  # the current model, for the epoch's figures (O(table), once an epoch)
                    for table in step.tables:
                        table.pull_all()
            evaluate = cluster.is_first
            record = {
                "epoch": epoch + 1,
                "loss": loss_sum / max(mine, 1),
                "train_mse": mse(net, train, ctx, train_rows) if evaluate else float("nan"),
                "test_mse": mse(net, test, ctx, test_rows) if evaluate else float("nan"),
                "seconds": seconds,
                "rows_per_second": mine / seconds if seconds > 0 else float("nan"),
            }
            history.append(record)
            if checkpoints is not None:
                checkpoints.save(epoch + 1, net, step.tables, step.trainer, history, rng)
            if on_epoch is not None:
                on_epoch(epoch + 1, net)
            if progress:
                log(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f}  train MSE {record['train_mse']:.4f}  "
                    f"test MSE {record['test_mse']:.4f}  ({record['rows_per_second']:,.0f} rows/s)")
    rate = rows_total / seconds_total if seconds_total > 0 else float("nan")
    return FitResult(net=net, history=history, config=cfg, train_rows_per_second=rate)


class _Stepper:
    """One optimisation step on a batch, for the configured objective and update mode; with a
    distributed ``cluster`` (:mod:`recsys.distributed`) the tables and the towers live on the parameter
    servers."""

    def __init__(self, net: MFBlock, cfg: TrainConfig, ctx, n_items: int, rng, cluster=None) -> None:
        self.net, self.cfg, self.ctx, self.n_items, self.rng = net, cfg, ctx, n_items, rng
        self.workers = cluster.workers if cluster is not None else 1
        params = cfg.optimizer_params()
        if cfg.update == "rows":
            self.towers = Towers(net)
            self.towers.hybridize(static_alloc=True)
            if cluster is not None and cluster.distributed:
                from .distributed import KVDense, KVRowTable, set_optimizer

                set_optimizer(cluster, cfg.opt, params)
                self.trainer = KVDense(cluster, self.towers.collect_params(), "towers")
                self.tables = (KVRowTable(cluster, "user_embeddings", net.user_embeddings.weight),
                               KVRowTable(cluster, "item_embeddings", net.item_embeddings.weight))
            else:
                self.trainer = gluon.Trainer(self.towers.collect_params(), cfg.opt, dict(params), kvstore=None)
                self.tables = (_RowTable(net.user_embeddings.weight, cfg.opt, params, 0),
                               _RowTable(net.item_embeddings.weight, cfg.opt, params, 1))
        else:
            if cluster is not None and cluster.distributed:
                raise ValueError("update='trainer' trains on one instance; multi-instance training uses row updates")
            self.trainer = gluon.Trainer(net.collect_params(), cfg.opt, dict(params), kvstore=None)
            self.tables = ()

    def sample_negatives(self, n: int) -> np.ndarray:
        """Uniformly sampled negative items (BPR)."""
        return self.rng.integers(0, self.n_items, n)

    def chunk(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray, batches: list):
        """Run these batches (index arrays into the rows) one step each; return the summed loss (a (1,)
        NDArray, filled when the engine has run them)."""
        if self.cfg.update == "trainer":
            return nd.array([sum(self._trainer_step(users[b], items[b], labels[b]) for b in batches)])
        implicit = self.cfg.objective == "implicit"
        plan = {"u_rows": [], "u_inv": [], "i_rows": [], "i_inv": []}
        bounds, s = [], 0
        for b in batches:
            u, i = users[b], items[b]
            if implicit:
                i = np.concatenate([i, self.sample_negatives(len(u))])
            uu, ui = np.unique(u, return_inverse=True)
            iu, ii = np.unique(i, return_inverse=True)
            bounds.append((s, s + len(b), len(uu), len(iu)))
            s += len(b)
            for k, v in (("u_rows", uu), ("u_inv", ui), ("i_rows", iu), ("i_inv", ii)):
                plan[k].append(v)
        arrays = {k: nd.array(np.concatenate(v), ctx=self.ctx, dtype="int64") for k, v in plan.items()}
        labels_nd = nd.array(labels[np.concatenate(batches)], ctx=self.ctx)
        total = nd.zeros((1,), ctx=self.ctx)
        ur = ir = 0
        ut, it = self.tables
        for s, e, nu, ni in bounds:
            n = e - s
            u_rows, i_rows = arrays["u_rows"][ur:ur + nu], arrays["i_rows"][ir:ir + ni]
            u_inv = arrays["u_inv"][s:e]
            i_inv = arrays["i_inv"][2 * s:2 * e] if implicit else arrays["i_inv"][s:e]
            ur, ir = ur + nu, ir + ni
            u_block, i_block = ut.gather(u_rows), it.gather(i_rows)
            with autograd.record():
                a = nd.take(u_block, u_inv)
                b = nd.take(i_block, i_inv)
                if implicit:
                    loss = _bpr(self.towers(a, nd.slice_axis(b, axis=0, begin=0, end=n)),
                                self.towers(a, nd.slice_axis(b, axis=0, begin=n, end=2 * n)))
                else:
                    loss = _l2(self.towers(a, b), labels_nd[s:e])
            loss.backward()
            self.trainer.step(n)
            # the gradient's denominator: per example ("sum"), or the mean over the (global) batch
            scale = 1 if self.cfg.embedding_grad == "sum" else n * self.workers
            ut.update(u_rows, u_block, scale)
            it.update(i_rows, i_block, scale)
            total += loss.sum()
        return total

    def _trainer_step(self, users, items, labels) -> float:
        bs = len(users)
        u = nd.array(users, ctx=self.ctx)
        i = nd.array(items, ctx=self.ctx)
        with autograd.record():
            if self.cfg.objective == "implicit":
                loss = _bpr(self.net(u, i), self.net(u, nd.array(self.sample_negatives(bs), ctx=self.ctx)))
            else:
                loss = _l2(self.net(u, i), nd.array(labels, ctx=self.ctx))
        loss.backward()
        self.trainer.step(bs)
        return float(loss.sum().asscalar())


def _l2(pred, label):
    """Gluon's L2Loss: (pred - label)^2 / 2 per row."""
    return nd.square(pred - label) / 2


def _bpr(pos, neg):
    """-log sigmoid(pos - neg) = softplus(neg - pos), per row."""
    return nd.Activation(neg - pos, act_type="softrelu")


def train_and_save(prepared, model_dir, progress: bool = True, extra_metrics: dict | None = None, log=log_stderr,
                   cluster=None, checkpoint_dir=None, **hyperparameters):
    """Fit, rank the full catalogue, and save the model directory with its metrics.

    Returns ``(result, metrics)``; ``metrics`` holds the last epoch's MSEs, HR@10, NDCG@10 and the
    training rate, plus ``extra_metrics``. Shared by ``recsys train`` and the SageMaker entry point. On a
    host of a multi-instance job other than the first, nothing is evaluated or saved (``metrics`` is None).
    """
    from .artifacts import save_model
    from .metrics import evaluate_model

    result = fit(prepared, progress=progress, log=log, cluster=cluster, checkpoint_dir=checkpoint_dir,
                 **hyperparameters)
    if cluster is not None and not cluster.is_first:
        return result, None
    ranking = evaluate_model(result.net, prepared, progress=progress)
    metrics = {
        "epochs": result.config.epochs,
        "objective": result.config.objective,
        "train_mse": result.last.get("train_mse"),
        "test_mse": result.last.get("test_mse"),
        "hr_at_10": ranking["hr_at_10"],
        "ndcg_at_10": ranking["ndcg_at_10"],
        "train_rows_per_second": result.train_rows_per_second,
        **(extra_metrics or {}),
    }
    save_model(model_dir, result.net, prepared, dataclasses.asdict(result.config), metrics)
    return result, metrics


# ---- the side-information model (SideMFBlock) ---------------------------------------------------

@dataclasses.dataclass
class SideConfig:
    """Hyperparameters of :class:`~recsys.model.SideMFBlock` training (BPR, several sampled negatives, Adam).
    The defaults were chosen on the October sample's validation split (notebook 02), never on its test split."""

    epochs: int = 40
    num_embeddings: int = 32
    batch_size: int = 256
    lr: float = 0.01
    wd: float = 1e-4
    negatives: int = 8
    recent: int = 5
    init_scale: float = 0.05
    ctx: str = "auto"
    seed: int = DEFAULT_SEED
    scale_epochs: bool = False  # the epochs and batch-size rules of recsys.presets
    scale_batch: bool = False

    def validate(self) -> "SideConfig":
        for name in ("epochs", "num_embeddings", "batch_size", "negatives", "recent", "seed"):
            _check_int(name, getattr(self, name))
        if self.epochs < 0 or self.negatives < 1 or self.batch_size < 1 or self.recent < 1:
            raise ValueError("epochs >= 0, negatives >= 1, batch_size >= 1 and recent >= 1 are required")
        for name, ok in (("lr", self.lr > 0), ("wd", self.wd >= 0), ("init_scale", self.init_scale > 0)):
            value = getattr(self, name)
            if not (math.isfinite(value) and ok):
                raise ValueError(f"{name} must be a finite number {'>= 0' if name == 'wd' else '> 0'}, not {value}")
        return self


#: SideMFBlock's negatives of one batch are drawn from a pool of this many uniformly sampled products (each
#: negative is still uniform over the catalogue; a batch then updates about batch + pool item rows instead of
#: batch x (1 + negatives), which dominates a step's cost). A catalogue this small is the pool itself.
NEGATIVE_POOL = 2048


def _side_plan(users, items, batches, rng, n_items: int, k: int, ctx):
    """The index arrays of these batches (index arrays into the pairs ``users``, ``items``), each positive
    with ``k`` uniformly sampled negatives (from a per-batch pool, :data:`NEGATIVE_POOL`), built on the host
    for the whole chunk and copied to the device once per array. Yields ``(n, u_rows, u_inv, i_rows, i_inv,
    users)`` per batch (NDArray slices): the batch's distinct users and where each pair's user is among
    them, its distinct candidate items and where each of the ``n x (k + 1)`` candidates (the positive
    first) is among them, and the pairs' users."""
    plan = {"u_rows": [], "u_inv": [], "i_rows": [], "i_inv": []}
    bounds = []
    for b in batches:
        u = users[b]
        n = len(u)
        if n_items > NEGATIVE_POOL:  # a batch's negatives come from one uniform pool: fewer rows to update
            pool = rng.integers(0, n_items, NEGATIVE_POOL)
            pick = rng.integers(0, NEGATIVE_POOL, (n, k))
            # the distinct candidates: the positives and the pool's drawn entries (a sort of n + pool ids,
            # not of n x (k + 1)); the same rows, in the same order, as np.unique of every candidate
            drawn = np.bincount(pick.reshape(-1), minlength=NEGATIVE_POOL) > 0
            iu, inv = np.unique(np.concatenate([items[b], pool[drawn]]), return_inverse=True)
            where = np.zeros(NEGATIVE_POOL, np.int64)
            where[drawn] = inv[n:]
            i_inv = np.empty((n, k + 1), np.int64)
            i_inv[:, 0] = inv[:n]
            i_inv[:, 1:] = where[pick]
        else:  # a small catalogue is the pool itself (the same draws as without one)
            cand = np.empty((n, k + 1), np.int64)
            cand[:, 0] = items[b]
            cand[:, 1:] = rng.integers(0, n_items, (n, k))
            iu, i_inv = np.unique(cand, return_inverse=True)
        uu, u_inv = np.unique(u, return_inverse=True)
        for key, v in (("u_rows", uu), ("u_inv", u_inv), ("i_rows", iu), ("i_inv", i_inv.reshape(-1))):
            plan[key].append(v)
        bounds.append((n, len(uu), len(iu)))
    arrays = {key: nd.array(np.concatenate(v), ctx=ctx, dtype="int64") for key, v in plan.items()}
    users_nd = nd.array(users[np.concatenate(batches)], ctx=ctx, dtype="int64")
    ur = ir = s = 0
    for n, nu, ni in bounds:
        yield (n, arrays["u_rows"][ur:ur + nu], arrays["u_inv"][s:s + n], arrays["i_rows"][ir:ir + ni],
               arrays["i_inv"][s * (k + 1):(s + n) * (k + 1)], users_nd[s:s + n])
        ur, ir, s = ur + nu, ir + ni, s + n


class _SideLoss(gluon.HybridBlock):
    """SideMFBlock's BPR loss on gathered rows, hybridised into one cached graph per batch shape: the user
    tower once per pair, the item tower once per candidate (the positive, then ``k`` negatives), and
    ``softplus(negative - positive)`` averaged over the negatives. The side information (the users' recent
    rows, the items' attributes) is looked up inside the graph."""

    #: SideMFBlock's attribute embeddings, shared (not copied): the towers below run on them
    SHARED = ("category_embeddings", "brand_embeddings", "last_category", "last_brand", "recent_category",
              "recent_brand")

    def __init__(self, net, k: int, **kwargs) -> None:
        super().__init__(prefix=net.prefix + "loss_", **kwargs)
        self.k = int(k)
        for name in self.SHARED:
            setattr(self, name, getattr(net, name))

    def hybrid_forward(self, F, user_rows, item_rows, bias_rows, item_inverse, users, items, recent_category,
                       recent_brand, recent_mask, item_category, item_brand):
        from .model import SideMFBlock

        # SideMFBlock's own towers, run on this block's (shared) embeddings: the item tower once per distinct
        # item of the batch (``items``: their ids, the rows of ``item_rows``), then spread to the candidates
        uv = SideMFBlock.user_tower(self, F, user_rows, F.take(recent_category, users), F.take(recent_brand, users),
                                    F.take(recent_mask, users))
        iv = F.take(SideMFBlock.item_tower(self, F, item_rows, bias_rows, F.take(item_category, items),
                                           F.take(item_brand, items)), item_inverse)
        scores = F.reshape(F.batch_dot(F.reshape(iv, shape=(-4, -1, self.k + 1, -2)), F.expand_dims(uv, axis=2)),
                           shape=(-1, self.k + 1))
        pos = F.slice_axis(scores, axis=1, begin=0, end=1)
        neg = F.slice_axis(scores, axis=1, begin=1, end=None)
        return F.mean(F.Activation(F.broadcast_sub(neg, pos), act_type="softrelu"), axis=1)


def fit_side(prepared, train=None, progress: bool = True, on_epoch=None, log=None, checkpoint_dir=None, cluster=None,
             **overrides):
    """Train a :class:`~recsys.model.SideMFBlock` on the distinct (user, item) pairs of ``train``
    (default: ``prepared.train``) with BPR against ``negatives`` uniformly sampled items per positive.
    Users without a training row keep a zero embedding, so the item bias alone ranks for them (cold
    start). ``on_epoch(epoch, net)`` is called after every epoch (the validation protocol's
    checkpoints); ``log`` (optional) gets one line per epoch with its rate; ``checkpoint_dir``
    (:mod:`recsys.checkpoint`): save every epoch there and resume from the newest one it holds;
    ``cluster`` (:class:`recsys.distributed.Cluster`): a worker of a multi-instance job trains its shard
    on the parameter servers. Returns ``(net, config, pairs_per_second)``; ``config`` holds the epochs and
    batch size actually used."""
    from .model import SideMFBlock

    cfg = SideConfig(**overrides).validate()
    train = prepared.train if train is None else train
    ctx = _mx.context(cfg.ctx)
    rng = np.random.default_rng(cfg.seed)
    mx.random.seed(cfg.seed)
    users, items = distinct_pairs(train[USER].to_numpy(), train[ITEM].to_numpy(), prepared.n_items)
    epochs, batch = schedule(cfg.epochs, cfg.batch_size, len(users), cfg.scale_epochs, cfg.scale_batch)
    cfg = dataclasses.replace(cfg, epochs=epochs, batch_size=batch)
    side = side_information(prepared, train, cfg.recent)
    net = SideMFBlock(prepared.n_users, prepared.n_items, cfg.num_embeddings, side["n_categories"], side["n_brands"],
                      cfg.recent)
    with _mx.gpu_errors(ctx):
        net.initialize(mx.init.Normal(cfg.init_scale), ctx=ctx)
        net.item_bias.weight.set_data(nd.zeros((prepared.n_items, 1), ctx=ctx))
        cold = np.flatnonzero(np.bincount(users, minlength=prepared.n_users) == 0)
        if len(cold):  # never in a batch: a zero vector, so that u . v is the item bias alone
            _scatter(net.user_embeddings.weight.data(ctx), nd.array(cold, ctx=ctx, dtype="int64"),
                     nd.zeros((len(cold), cfg.num_embeddings), ctx=ctx))
        net.set_side_information(side["item_category"], side["item_brand"], side["recent_category"],
                                 side["recent_brand"], side["recent_mask"])
        net.hybridize(static_alloc=True)
        # the big per-user and per-item tables are updated row-block by row-block (their batch's rows
        # and Adam state only, as in fit); the small attribute tables by a Trainer
        big_params = (net.user_embeddings.weight, net.item_embeddings.weight, net.item_bias.weight)
        for p in big_params:
            p.grad_req = "null"  # their gradients are the gathered blocks': no dense gradient of a whole table
        big = {id(p) for p in big_params}
        small = {name: p for name, p in net.collect_params().items() if id(p) not in big and p.grad_req != "null"}
        params = {"learning_rate": cfg.lr, "wd": cfg.wd}
        cluster = cluster if cluster is not None else Cluster()
        if cluster.distributed:
            from .distributed import KVDense, KVRowTable, set_optimizer

            if checkpoint_dir is not None:
                raise ValueError("checkpoints need one instance: on several, the optimizer state lives on the servers")
            set_optimizer(cluster, "adam", params)
            trainer = KVDense(cluster, small, "side")
            user_t, item_t, bias_t = (KVRowTable(cluster, "user_embeddings", net.user_embeddings.weight),
                                      KVRowTable(cluster, "item_embeddings", net.item_embeddings.weight),
                                      KVRowTable(cluster, "item_bias", net.item_bias.weight))
        else:
            trainer = gluon.Trainer(small, "adam", dict(params), kvstore=None)
            user_t, item_t, bias_t = (_RowTable(net.user_embeddings.weight, "adam", params, 0),
                                      _RowTable(net.item_embeddings.weight, "adam", params, 1),
                                      _RowTable(net.item_bias.weight, "adam", params, 2))
        consts = {name: nd.array(side[name], ctx=ctx) for name in
                  ("item_category", "item_brand", "recent_category", "recent_brand", "recent_mask")}
        k = cfg.negatives
        step = _SideLoss(net, k)
        step.hybridize(static_alloc=True)
        t_total, n_total, start = 0.0, 0, 0
        tables = (user_t, item_t, bias_t)
        checkpoints = _checkpoints(checkpoint_dir, cfg, log)
        state = checkpoints.latest() if checkpoints is not None else None
        if state is not None:
            start = checkpoints.restore(state, net, tables, trainer, rng)
        with progress_bar(total=len(users) * (cfg.epochs - start), unit="pair", unit_scale=True, desc="train",
                          enabled=progress) as bar:
            for epoch in range(start, cfg.epochs):
                bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}", refresh=False)
                mx.random.seed(epoch_seed(cfg.seed, epoch))
                order = rng.permutation(len(users))  # every host draws the same permutation; each trains its shard
                batches = cluster.shard(order, cfg.batch_size)
                mine = sum(len(b) for b in batches)
                t0 = time.perf_counter()
                chunks = OneChunkBehind(bar)
                for c in range(0, len(batches), BATCHES_PER_CHUNK):
                    part = batches[c:c + BATCHES_PER_CHUNK]
                    total = nd.zeros((1,), ctx=ctx)
                    for n, u_rows, u_inv, i_rows, i_inv, u_idx in _side_plan(
                            users, items, part, rng, prepared.n_items, k, ctx):
                        u_block, i_block, b_block = user_t.gather(u_rows), item_t.gather(i_rows), bias_t.gather(i_rows)
                        with autograd.record():
                            loss = step(nd.take(u_block, u_inv), i_block, b_block, i_inv, u_idx, i_rows,
                                        consts["recent_category"], consts["recent_brand"],
                                        consts["recent_mask"], consts["item_category"], consts["item_brand"])
                        loss.backward()
                        trainer.step(n, ignore_stale_grad=True)
                        for table, rows, block in ((user_t, u_rows, u_block), (item_t, i_rows, i_block),
                                                   (bias_t, i_rows, b_block)):
                            table.update(rows, block, n * cluster.workers)  # the mean over the (global) batch
                        total += loss.sum()
                    chunks.add(total, sum(len(b) for b in part) * (len(users) / max(mine, 1)))
                loss_sum = chunks.finish()
                seconds = time.perf_counter() - t0
                t_total += seconds
                n_total += mine
                if cluster.distributed:
                    cluster.steps += len(batches)
                    if cluster.is_first and epoch + 1 == cfg.epochs:  # the whole model, once, at the end
                        for table in (user_t, item_t, bias_t):
                            table.pull_all()
                if log is not None:
                    log(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / max(mine, 1):.4f}  "
                        f"({mine / max(seconds, 1e-9):,.0f} pairs/s)")
                if checkpoints is not None:
                    checkpoints.save(epoch + 1, net, tables, trainer, [], rng)
                if on_epoch is not None:
                    on_epoch(epoch + 1, net)
    return net, cfg, (n_total / t_total if t_total > 0 else float("nan"))
