"""Running a network one sample at a time, for results that do not depend on the batch."""

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn


class PerSample(nn.Module):
    """Calls the wrapped network on each sample alone, on single-threaded kernels, spread over a
    pool of ``workers`` threads, and concatenates the results.

    CPU kernels choose their blocking (and so their summation order) by batch size and thread count,
    which changes the last bits of the output. One sample on one thread is computed the same way
    whatever batch or process it came in, which makes CPU outputs bit-identical for any micro-batch
    size and process count. The process must run with ``torch.set_num_threads(1)``; the pool keeps the
    cores busy instead (kernels release the GIL).
    """

    def __init__(self, net: nn.Module, workers: int = 1):
        super().__init__()
        self.net = net
        self.in_channels = getattr(net, "in_channels", None)
        self.workers = max(1, workers)
        # OpenMP's thread count is per thread: each worker sets its own to one
        self._pool = (ThreadPoolExecutor(self.workers, initializer=torch.set_num_threads, initargs=(1,))
                      if self.workers > 1 else None)

    def _one(self, x, args, i, grad, autocast_dtype):
        # grad mode and autocast are thread-local: carry the caller's into the worker
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16,
                                                          enabled=autocast_dtype is not None):
            return self.net(x[i:i + 1], *(a[i:i + 1] if torch.is_tensor(a) else a for a in args))

    def forward(self, x: torch.Tensor, *args):
        grad = torch.is_grad_enabled()
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        if self._pool is None or len(x) == 1:
            outs = [self._one(x, args, i, grad, dtype) for i in range(len(x))]
        else:
            outs = list(self._pool.map(lambda i: self._one(x, args, i, grad, dtype), range(len(x))))
        return torch.cat(outs)
