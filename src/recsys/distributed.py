"""Multi-instance training on MXNet's parameter server, as SageMaker launches it.

With ``distribution={"parameter_server": {"enabled": True}}`` and ``instance_count=N``, the MXNet
training toolkit starts a scheduler on the first host and a server on every host (``python -c
'import mxnet'`` with ``DMLC_ROLE``), then the entry point on every host as a worker with
``DMLC_ROLE=worker``. :class:`Cluster` is what the training loops see of that:

* one host (no ``DMLC_ROLE=worker``): nothing changes, the kit's own row updates run in process;
* a worker of N hosts: a ``dist_sync`` kvstore. The servers hold every parameter and run the optimizer
  (``kv.set_optimizer``); each worker trains on its shard of the examples (by its index in
  ``SM_HOSTS``: ``kv.rank`` is not guaranteed to equal it), with the same number of steps on every host
  (``dist_sync`` waits for every worker at every step). The big tables travel as ``row_sparse``: a step
  pulls the batch's rows and pushes their gradient, so its traffic is O(batch rows), not O(table)
  (:class:`KVRowTable` counts it). The small dense parameters are pushed and pulled whole. The
  servers sum the workers' gradients; each worker divides by the global batch, so a step is the mean
  over all the workers' examples (the rows' "sum" steps stay per example).
* the first host (``hosts[0]``) pulls the whole model at the end, evaluates and saves it; the others
  save nothing.

Every host prepares the same data from the same files (the training channel is fully replicated), so
dense ids agree without any exchange. Optimizer state lives on the servers, so a multi-instance job has
no per-epoch checkpoints (:mod:`recsys.checkpoint` needs one instance).

Imported by the SageMaker training container (Python 3.8).
"""

from __future__ import annotations

import json
import os

import numpy as np


class Cluster:
    """The hosts of the job and, on a worker of several, the ``dist_sync`` kvstore."""

    def __init__(self, hosts=("algo-1",), current: str = "algo-1", kv=None) -> None:
        self.hosts = list(hosts)
        self.current = current
        self.index = self.hosts.index(current) if current in self.hosts else 0
        self.kv = kv
        self.bytes_pulled = 0
        self.bytes_pushed = 0
        self.steps = 0

    @classmethod
    def from_env(cls, env=None) -> "Cluster":
        """The cluster SageMaker describes in the environment (``SM_HOSTS``, ``SM_CURRENT_HOST``, and
        ``DMLC_ROLE=worker`` when the parameter server is on)."""
        env = os.environ if env is None else env
        hosts = json.loads(env.get("SM_HOSTS", '["algo-1"]'))
        current = env.get("SM_CURRENT_HOST", hosts[0])
        kv = None
        if env.get("DMLC_ROLE") == "worker" and len(hosts) > 1:
            from .mx import mx

            kv = mx.kv.create("dist_sync")
        return cls(hosts, current, kv)

    @property
    def distributed(self) -> bool:
        return self.kv is not None

    @property
    def workers(self) -> int:
        return len(self.hosts) if self.distributed else 1

    @property
    def is_first(self) -> bool:
        return self.index == 0

    def shard(self, order: np.ndarray, batch: int) -> list:
        """This host's batches of ``order`` (a permutation every host draws alike): the ``index``-th of
        every ``workers`` positions, split into exactly as many batches as the largest shard needs, so
        that every host runs the same number of steps."""
        if not self.distributed:
            return [order[s:s + batch] for s in range(0, len(order), batch)]
        mine = order[self.index::self.workers]
        largest = -(-len(order) // self.workers)
        steps = max(1, -(-largest // batch))
        return [b for b in np.array_split(mine, steps)]

    def traffic(self) -> dict:
        """Bytes of parameters pulled and pushed per step (all tables), on this worker."""
        steps = max(self.steps, 1)
        return {"steps": self.steps, "bytes_pulled_per_step": self.bytes_pulled / steps,
                "bytes_pushed_per_step": self.bytes_pushed / steps}


class KVRowTable:
    """A table on the parameter servers, row-updated: the same interface as ``recsys.training._RowTable``.

    ``gather(rows)`` pulls the batch's rows (``row_sparse_pull``); ``update(rows, block, grad_scale)``
    pushes their gradient as a ``row_sparse`` array, divided by ``grad_scale`` (the caller's global
    denominator); the servers sum the workers' pushes and apply the optimizer to those rows."""

    def __init__(self, cluster: Cluster, key: str, param) -> None:
        from .mx import mx

        self.cluster, self.key, self.param = cluster, key, param
        weight = param.data()
        self.shape, self.ctx = weight.shape, weight.context
        self.row_bytes = int(np.prod(self.shape[1:])) * 4
        # rank 0's value (every worker built the same net), with every row listed: ``tostype("row_sparse")``
        # would drop all-zero rows (a zero-initialised bias), and a server whose slice of rows is empty
        # aborts ("init with empty data is not supported"), leaving the workers waiting
        every_row = mx.nd.arange(0, self.shape[0], ctx=self.ctx, dtype="int64")
        cluster.kv.init(key, mx.nd.sparse.row_sparse_array((weight, every_row), shape=self.shape, ctx=self.ctx))
        self._out = mx.nd.sparse.zeros("row_sparse", self.shape, ctx=self.ctx)

    def gather(self, rows_nd):
        self.cluster.kv.row_sparse_pull(self.key, out=self._out, row_ids=rows_nd)
        block = self._out.data.copy()
        self.cluster.bytes_pulled += block.shape[0] * self.row_bytes
        block.attach_grad()
        return block

    def update(self, rows_nd, block, grad_scale: float) -> None:
        from .mx import mx

        grad = mx.nd.sparse.row_sparse_array((block.grad / float(grad_scale), rows_nd), shape=self.shape, ctx=self.ctx)
        self.cluster.kv.push(self.key, grad)
        self.cluster.bytes_pushed += block.shape[0] * self.row_bytes

    def pull_all(self) -> None:
        """The whole table into the local parameter (once, at the end: O(table))."""
        from .mx import mx

        rows = mx.nd.arange(0, self.shape[0], ctx=self.ctx, dtype="int64")
        self.cluster.kv.row_sparse_pull(self.key, out=self._out, row_ids=rows)
        self.param.set_data(self._out.tostype("default"))


class KVDense:
    """The small dense parameters on the parameter servers: the interface of a Gluon ``Trainer``'s
    ``step``. Each step pushes every gradient (divided by ``workers x batch``) and pulls every weight."""

    def __init__(self, cluster: Cluster, params: dict, prefix: str) -> None:
        self.cluster = cluster
        self.params = {f"{prefix}:{name}": p for name, p in sorted(params.items()) if p.grad_req != "null"}
        for key, p in self.params.items():
            cluster.kv.init(key, p.data())

    def step(self, batch_size: int, ignore_stale_grad: bool = False) -> None:
        scale = 1.0 / (batch_size * self.cluster.workers)
        for key, p in self.params.items():
            grad = p.grad() * scale
            self.cluster.kv.push(key, grad)
            self.cluster.kv.pull(key, out=p.data())
            self.cluster.bytes_pushed += grad.size * 4
            self.cluster.bytes_pulled += grad.size * 4


def set_optimizer(cluster: Cluster, opt_name: str, opt_params: dict) -> None:
    """The servers' optimizer: the training loop's, with the gradients already scaled by the workers."""
    from .mx import mx

    cluster.kv.set_optimizer(mx.optimizer.create(opt_name, **{**opt_params, "rescale_grad": 1.0}))
