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
import time

import numpy as np

from . import mx as _mx
from .constants import DEFAULT_SEED, ITEM, LABEL, USER
from .model import MFBlock, Towers, build
from .prepare import side_information
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

    def validate(self) -> "TrainConfig":
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
    """An embedding table updated row-block by row-block with an MXNet optimizer."""

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


def mse(net: MFBlock, frame, ctx=None) -> float:
    """Mean squared error of the network against ``event_type_digit`` on ``frame``'s rows."""
    if len(frame) == 0:
        return float("nan")
    pred = predict(net, frame[USER].to_numpy(), frame[ITEM].to_numpy(), ctx)
    return float(np.mean((pred.astype(np.float64) - frame[LABEL].to_numpy()) ** 2))


def fit(prepared, progress: bool = True, net: MFBlock | None = None, log=print, on_epoch=None, train=None,
        **overrides) -> FitResult:
    """Train on ``prepared.train`` (or ``train``); evaluate MSE on train and test after every epoch. With
    ``progress``, a bar per epoch (stderr) and one line per epoch through ``log`` (default: ``print``).
    ``on_epoch(epoch, net)`` runs after every epoch (the validation protocol's checkpoints)."""
    cfg = TrainConfig(**overrides).validate()
    ctx = _mx.context(cfg.ctx)
    if train is not None:
        prepared = dataclasses.replace(prepared, train=train)
    with _mx.gpu_errors(ctx):  # an unsupported GPU fails with the guard's message, not MXNet's
        return _fit(prepared, cfg, ctx, progress, net, log, on_epoch)


def _fit(prepared, cfg: TrainConfig, ctx, progress: bool, net: MFBlock | None, log=print, on_epoch=None) -> FitResult:
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
        pairs = np.unique(users.astype(np.int64) * prepared.n_items + items)
        users, items = (pairs // prepared.n_items).astype(np.int32), (pairs % prepared.n_items).astype(np.int32)
        labels = np.ones(len(users), np.float32)
    step = _Stepper(net, cfg, ctx, prepared.n_items, rng)
    history, seconds_total, rows_total = [], 0.0, 0
    n = len(users)
    for epoch in range(cfg.epochs):
        order = rng.permutation(n)
        loss_sum = 0.0
        t0 = time.perf_counter()
        with progress_bar(total=n, unit="row", unit_scale=True, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                          enabled=progress) as bar:
            chunk = cfg.batch_size * BATCHES_PER_CHUNK
            for s in range(0, n, chunk):
                idx = order[s:s + chunk]
                loss_sum += step.chunk(users[idx], items[idx], labels[idx])
                bar.update(len(idx))
        nd.waitall()
        seconds = time.perf_counter() - t0
        seconds_total += seconds
        rows_total += n
        record = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(n, 1),
            "train_mse": mse(net, train, ctx),
            "test_mse": mse(net, test, ctx),
            "seconds": seconds,
            "rows_per_second": n / seconds if seconds > 0 else float("nan"),
        }
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch + 1, net)
        if progress:
            log(f"epoch {epoch + 1}: loss {record['loss']:.4f}  train MSE {record['train_mse']:.4f}  "
                  f"test MSE {record['test_mse']:.4f}  ({record['rows_per_second']:,.0f} rows/s)")
    rate = rows_total / seconds_total if seconds_total > 0 else float("nan")
    return FitResult(net=net, history=history, config=cfg, train_rows_per_second=rate)


class _Stepper:
    """One optimisation step on a batch, for the configured objective and update mode."""

    def __init__(self, net: MFBlock, cfg: TrainConfig, ctx, n_items: int, rng) -> None:
        self.net, self.cfg, self.ctx, self.n_items, self.rng = net, cfg, ctx, n_items, rng
        params = cfg.optimizer_params()
        if cfg.update == "rows":
            self.towers = Towers(net)
            self.towers.hybridize(static_alloc=True)
            self.trainer = gluon.Trainer(self.towers.collect_params(), cfg.opt, dict(params), kvstore=None)
            self.tables = (_RowTable(net.user_embeddings.weight, cfg.opt, params, 0),
                           _RowTable(net.item_embeddings.weight, cfg.opt, params, 1))
        else:
            self.trainer = gluon.Trainer(net.collect_params(), cfg.opt, dict(params), kvstore=None)

    def sample_negatives(self, n: int) -> np.ndarray:
        """Uniformly sampled negative items (BPR)."""
        return self.rng.integers(0, self.n_items, n)

    def chunk(self, users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> float:
        """Run the consecutive batches of these rows; return the summed loss."""
        bs = self.cfg.batch_size
        if self.cfg.update == "trainer":
            return sum(self._trainer_step(users[s:s + bs], items[s:s + bs], labels[s:s + bs])
                       for s in range(0, len(users), bs))
        implicit = self.cfg.objective == "implicit"
        plan = {"u_rows": [], "u_inv": [], "i_rows": [], "i_inv": []}
        bounds = []
        for s in range(0, len(users), bs):
            u, i = users[s:s + bs], items[s:s + bs]
            if implicit:
                i = np.concatenate([i, self.sample_negatives(len(u))])
            uu, ui = np.unique(u, return_inverse=True)
            iu, ii = np.unique(i, return_inverse=True)
            bounds.append((s, min(s + bs, len(users)), len(uu), len(iu)))
            for k, v in (("u_rows", uu), ("u_inv", ui), ("i_rows", iu), ("i_inv", ii)):
                plan[k].append(v)
        arrays = {k: nd.array(np.concatenate(v), ctx=self.ctx, dtype="int64") for k, v in plan.items()}
        labels_nd = nd.array(labels, ctx=self.ctx)
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
            scale = 1 if self.cfg.embedding_grad == "sum" else n
            ut.update(u_rows, u_block, scale)
            it.update(i_rows, i_block, scale)
            total += loss.sum()
        return float(total.asscalar())

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


def train_and_save(prepared, model_dir, progress: bool = True, extra_metrics: dict | None = None, log=print,
                   **hyperparameters):
    """Fit, rank the full catalogue, and save the model directory with its metrics.

    Returns ``(result, metrics)``; ``metrics`` holds the last epoch's MSEs, HR@10, NDCG@10 and the
    training rate, plus ``extra_metrics``. Shared by ``recsys train`` and the SageMaker entry point.
    """
    from .artifacts import save_model
    from .metrics import evaluate_model

    result = fit(prepared, progress=progress, log=log, **hyperparameters)
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


def fit_side(prepared, train=None, progress: bool = True, on_epoch=None, **overrides):
    """Train a :class:`~recsys.model.SideMFBlock` on the distinct (user, item) pairs of ``train``
    (default: ``prepared.train``) with BPR against ``negatives`` uniformly sampled items per positive.
    ``on_epoch(epoch, net)`` is called after every epoch (the validation protocol's checkpoints).
    Returns ``(net, config, rows_per_second)``."""
    from .model import SideMFBlock

    cfg = SideConfig(**overrides)
    if cfg.epochs < 0 or cfg.negatives < 1 or cfg.batch_size < 1 or not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError("epochs >= 0, negatives >= 1, batch_size >= 1 and a finite lr > 0 are required")
    train = prepared.train if train is None else train
    ctx = _mx.context(cfg.ctx)
    rng = np.random.default_rng(cfg.seed)
    mx.random.seed(cfg.seed)
    side = side_information(prepared, train, cfg.recent)
    net = SideMFBlock(prepared.n_users, prepared.n_items, cfg.num_embeddings, side["n_categories"], side["n_brands"],
                      cfg.recent)
    with _mx.gpu_errors(ctx):
        net.initialize(mx.init.Normal(cfg.init_scale), ctx=ctx)
        net.item_bias.weight.set_data(nd.zeros((prepared.n_items, 1), ctx=ctx))
        net.set_side_information(side["item_category"], side["item_brand"], side["recent_category"],
                                 side["recent_brand"], side["recent_mask"])
        net.hybridize(static_alloc=True)
        # the big per-user and per-item tables are updated row-block by row-block (their batch's rows
        # and Adam state only, as in fit); the small attribute tables by a Trainer
        big = {id(p) for p in (net.user_embeddings.weight, net.item_embeddings.weight, net.item_bias.weight)}
        small = {name: p for name, p in net.collect_params().items() if id(p) not in big and p.grad_req != "null"}
        trainer = gluon.Trainer(small, "adam", {"learning_rate": cfg.lr, "wd": cfg.wd}, kvstore=None)
        params = {"learning_rate": cfg.lr, "wd": cfg.wd}
        user_t, item_t, bias_t = (_RowTable(net.user_embeddings.weight, "adam", params, 0),
                                  _RowTable(net.item_embeddings.weight, "adam", params, 1),
                                  _RowTable(net.item_bias.weight, "adam", params, 2))
        consts = {name: nd.array(side[name], ctx=ctx) for name in
                  ("item_category", "item_brand", "recent_category", "recent_brand", "recent_mask")}
        pairs = np.unique(train[USER].to_numpy().astype(np.int64) * prepared.n_items + train[ITEM].to_numpy())
        users, items = pairs // prepared.n_items, pairs % prepared.n_items
        k = cfg.negatives
        t_total, n_total = 0.0, 0
        for epoch in range(cfg.epochs):
            order = rng.permutation(len(users))
            t0 = time.perf_counter()
            with progress_bar(total=len(users), unit="pair", desc=f"epoch {epoch + 1}/{cfg.epochs}",
                              enabled=progress) as bar:
                for s in range(0, len(users), cfg.batch_size):
                    idx = order[s:s + cfg.batch_size]
                    n = len(idx)
                    cand = np.empty((n, k + 1), np.int64)
                    cand[:, 0] = items[idx]
                    cand[:, 1:] = rng.integers(0, prepared.n_items, (n, k))
                    uu, u_inv = np.unique(users[idx], return_inverse=True)
                    iu, i_inv = np.unique(cand.reshape(-1), return_inverse=True)
                    u_rows, i_rows = nd.array(uu, ctx=ctx, dtype="int64"), nd.array(iu, ctx=ctx, dtype="int64")
                    u_block, i_block, b_block = user_t.gather(u_rows), item_t.gather(i_rows), bias_t.gather(i_rows)
                    u_idx = nd.array(np.repeat(users[idx], k + 1), ctx=ctx)
                    i_idx = nd.array(cand.reshape(-1), ctx=ctx)
                    u_pos, i_pos = nd.array(np.repeat(u_inv, k + 1), ctx=ctx), nd.array(i_inv, ctx=ctx)
                    with autograd.record():
                        uv = net.user_tower(nd, nd.take(u_block, u_pos), nd.take(consts["recent_category"], u_idx),
                                            nd.take(consts["recent_brand"], u_idx), nd.take(consts["recent_mask"], u_idx))
                        iv = net.item_tower(nd, nd.take(i_block, i_pos), nd.take(b_block, i_pos),
                                            nd.take(consts["item_category"], i_idx), nd.take(consts["item_brand"], i_idx))
                        scores = nd.sum(uv * iv, axis=1).reshape((n, k + 1))
                        pos = nd.slice_axis(scores, axis=1, begin=0, end=1)
                        neg = nd.slice_axis(scores, axis=1, begin=1, end=None)
                        loss = nd.Activation(nd.broadcast_sub(neg, pos), act_type="softrelu").mean(axis=1)
                    loss.backward()
                    trainer.step(n, ignore_stale_grad=True)
                    for table, rows, block in ((user_t, u_rows, u_block), (item_t, i_rows, i_block),
                                               (bias_t, i_rows, b_block)):
                        table.update(rows, block, n)
                    bar.update(n)
            nd.waitall()
            t_total += time.perf_counter() - t0
            n_total += len(users)
            if on_epoch is not None:
                on_epoch(epoch + 1, net)
    return net, cfg, (n_total / t_total if t_total > 0 else float("nan"))
