"""Running a network on the CPU as a pool of single-threaded calls over parts of a batch.

CPU kernels parallelise each operation over the cores with OpenMP; every operation then waits for its
slowest thread, and when another program holds a core those waits multiply (the digits demo took
82.7 s instead of 10.5 s with one of the two cores busy elsewhere). Giving each core its own part of
the batch on one thread avoids those barriers and keeps the cores busy (kernels release the GIL).
"""

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn


class ThreadSplit(nn.Module):
    """Calls the wrapped network on parts of the batch, each on single-threaded kernels in a pool of
    ``workers`` threads, and concatenates the results. The process must run with
    ``torch.set_num_threads(1)``.

    ``one_at_a_time``: every part is one sample. Kernels choose their blocking (and so their summation
    order) by batch size, so one sample on one thread is computed the same way whatever batch or process
    it came in: bit-identical CPU outputs for any micro-batch size and process count.
    """

    def __init__(self, net: nn.Module, workers: int = 1, one_at_a_time: bool = False):
        super().__init__()
        self.net, self.one_at_a_time = net, one_at_a_time
        self.workers = max(1, workers)
        # OpenMP's thread count is per thread: each worker sets its own to one
        self._pool = (ThreadPoolExecutor(self.workers, initializer=torch.set_num_threads, initargs=(1,))
                      if self.workers > 1 else None)

    def _part(self, x, args, part: slice, grad, autocast_dtype):
        # grad mode and autocast are thread-local: carry the caller's into the worker
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                                                          enabled=autocast_dtype is not None):
            return self.net(x[part], *(a[part] if torch.is_tensor(a) else a for a in args))

    def _parts(self, n: int) -> list:
        if self.one_at_a_time:
            return [slice(i, i + 1) for i in range(n)]
        bounds = [round(n * k / min(n, self.workers)) for k in range(min(n, self.workers) + 1)]
        return [slice(a, b) for a, b in zip(bounds, bounds[1:])]

    def forward(self, x: torch.Tensor, *args):
        grad = torch.is_grad_enabled()
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        parts = self._parts(len(x))
        if self._pool is None or len(parts) == 1:
            outs = [self._part(x, args, p, grad, dtype) for p in parts]
        else:
            outs = list(self._pool.map(lambda p: self._part(x, args, p, grad, dtype), parts))
        return torch.cat(outs)
