"""Reverse scans over [N, T] token tensors without a Python loop over T, and GAE's token packing.

Used by :func:`~grpo_custom.algorithms.estimators.gae.compute_gae`:

* :func:`reverse_affine_scan`: G_t = c_t + d_t·G_{t+1} for any decays, by chunks;
* :func:`discounted_reverse_sum`: G_t = Σ_{s≥t} ρ^{s−t}·c_s (one ρ per row), a matrix product per
  chunk of :data:`SCAN_CHUNK` tokens and :func:`reverse_affine_scan` over the chunks;
* :func:`pack_scored`: move each row's scored tokens (mask 1) to the left, so that skipping the
  tokens with mask 0 (a tool's output) becomes an ordinary scan over consecutive tokens;
* :func:`one_intra_op_thread`: the CPU thread policy below.

Why one thread on CPU. Every step is a memory-bound pass over [N, T]; ATen splits any op over more
than 32,768 elements across its OpenMP threads and each split waits until every thread has a core.
On a 2-core machine shared with other jobs (load average ≈ 4.5) a 1M-element float32 add took
0.26 ms on one thread and 8 ms on two, so GAE with two threads lost to a reverse Python loop over T
(whose ops on [N] vectors are never split). Memory: the first page of every fresh large allocation
costs a page fault (glibc returns freed large blocks to the system), and at N = 256, T = 4,096 the
6,000 faults of GAE's 24 MB of temporaries took 20-30 ms under that load, more than the arithmetic;
so on CPU the temporaries live in a :class:`Workspace` kept between calls.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["SCAN_CHUNK", "Workspace", "discounted_reverse_sum", "one_intra_op_thread", "pack_scored",
           "reverse_affine_scan"]

SCAN_CHUNK = 64  # C of discounted_reverse_sum: N·T·C multiply-adds in the matrix products, T/C chunks
CPU_ONE_THREAD = True  # one_intra_op_thread's switch (benchmarks/bench_estimators.py turns it off to show why)
_THREADS_LOCK = threading.Lock()


WORKSPACE_MAX_ELEMENTS = 1 << 20  # [N, T] sizes up to this keep their CPU work buffers between calls
_WORKSPACE: dict[tuple[str, torch.dtype], torch.Tensor] = {}


class Workspace:
    """Work buffers for one call: on CPU reused between calls (under the lock), elsewhere fresh tensors.

    Reused buffers avoid the page faults of fresh large allocations; they hold at most
    :data:`WORKSPACE_MAX_ELEMENTS` elements per name and dtype (GAE's six buffers: at most 29 MB for
    float32 inputs, 41 MB for float64) and are grown, never shrunk; larger calls allocate. Results never
    live in one.
    """

    def __init__(self, device: torch.device, reuse: bool):
        self.device, self.reuse = device, reuse

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized contiguous tensor of ``shape``; the same memory for the same name on the next call."""
        numel = math.prod(shape)
        if not self.reuse or numel > WORKSPACE_MAX_ELEMENTS:
            return torch.empty(shape, dtype=dtype, device=self.device)
        buffer = _WORKSPACE.get((name, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = _WORKSPACE[(name, dtype)] = torch.empty(numel, dtype=dtype)
        return buffer[:numel].view(shape)


@contextmanager
def one_intra_op_thread(device: torch.device) -> Iterator[Workspace]:
    """On CPU, torch's intra-op threads set to 1 inside the block and restored on exit; yields a :class:`Workspace`.

    ``torch.set_num_threads`` is process-wide: calls are serialized by a lock so that concurrent
    callers restore the count they found and never share work buffers; other threads' torch ops run
    on one thread meanwhile. Elsewhere than CPU nothing changes and the workspace allocates.
    """
    if device.type != "cpu" or not CPU_ONE_THREAD:
        yield Workspace(device, reuse=False)
        return
    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        if previous != 1:
            torch.set_num_threads(1)
        try:
            yield Workspace(device, reuse=True)
        finally:
            if previous != 1:
                torch.set_num_threads(previous)


def _chunk_size(length: int) -> int:
    """C ≈ √T rounded up to a multiple of 8 (both passes then take about √T Python steps)."""
    return max(8, int(math.ceil(math.sqrt(max(length, 1)) / 8.0)) * 8)


def reverse_affine_scan(contributions: torch.Tensor, decays: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """G_t = c_t + d_t·G_{t+1} along the last dimension, with G_T = 0, without a Python loop over T.

    Chunked, in three passes over chunks of C tokens laid out position-major ([C, N·K], K = T/C
    chunks): (1) a reverse pass over the C positions of every chunk at once keeps two [N·K] vectors,
    each chunk's sum with start value 0 and its product of decays; (2) a reverse pass over the K
    chunks turns them into the value G at every chunk's end; (3) a second reverse pass over the C
    positions writes G_t = c_t + d_t·G_{t+1} starting from those values. The result equals the
    sequential loop's except that a chunk's incoming value goes through one product of its decays;
    products only shrink (no division), so long sequences with γλ < 1 cannot overflow, and d = 0 resets.

    Args:
        contributions: [N, T] c_t.
        decays: [N, T] d_t (same dtype and device), any real values (0 resets, 1 carries).
        chunk_size: C; default ≈ √T (rounded up to a multiple of 8).

    Returns:
        [N, T] G, dtype of ``contributions``.
    """
    rows, length = contributions.shape
    if length == 0:
        return contributions.clone()
    size = chunk_size or _chunk_size(length)
    chunks = -(-length // size)
    padded = chunks * size
    if padded != length:  # pad on the right with c = 0, d = 1 (G past the end stays 0)
        contributions = torch.nn.functional.pad(contributions, (0, padded - length), value=0.0)
        decays = torch.nn.functional.pad(decays, (0, padded - length), value=1.0)
    # [C, N·K] position-major so that every step reads one contiguous row
    c = contributions.reshape(rows, chunks, size).permute(2, 0, 1).reshape(size, rows * chunks)
    d = decays.reshape(rows, chunks, size).permute(2, 0, 1).reshape(size, rows * chunks)
    local = c[size - 1].clone()  # [N·K] chunk sums with start value 0
    product = d[size - 1].clone()  # [N·K] Π of the chunk's decays
    for position in range(size - 2, -1, -1):
        torch.addcmul(c[position], d[position], local, out=local)
        product.mul_(d[position])
    local = local.view(rows, chunks).t().contiguous()  # [K, N]
    product = product.view(rows, chunks).t().contiguous()  # [K, N]
    ends = torch.zeros(chunks + 1, rows, dtype=c.dtype, device=c.device)  # [K+1, N] G after each chunk
    for chunk in range(chunks - 1, 0, -1):
        torch.addcmul(local[chunk], product[chunk], ends[chunk + 1], out=ends[chunk])
    result = torch.empty_like(c)  # [C, N·K]
    incoming = ends[1:].t().reshape(rows * chunks)  # [N·K] G at the position after each chunk
    torch.addcmul(c[size - 1], d[size - 1], incoming, out=result[size - 1])
    for position in range(size - 2, -1, -1):
        torch.addcmul(c[position], d[position], result[position + 1], out=result[position])
    return result.view(size, rows, chunks).permute(1, 2, 0).reshape(rows, padded)[:, :length]


def discounted_reverse_sum(contributions: torch.Tensor, discounts: torch.Tensor | float, *,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """G_t = Σ_{s≥t} ρ^{s−t}·c_s along the last dimension, one ρ per row, without a Python loop over T.

    The reverse affine scan with a constant decay per row, by chunks of C = :data:`SCAN_CHUNK`
    tokens (when ρ differs between rows, :func:`reverse_affine_scan` with decay ρ instead):
    inside every chunk a matrix product with K_{j,i} = ρ^{j−i} (j ≥ i, else 0) gives the
    chunk-local sums (start value 0); :func:`reverse_affine_scan` over the T/C chunk starts, with
    decay ρ^C, gives the value G_in entering each chunk from the right; then G_t = local_t +
    ρ^{C−i}·G_in at offset i. Powers are running products of ρ (cumprod), never divided by, so
    ρ < 1 cannot overflow and ρ = 0 resets exactly; powers below the dtype's smallest normal
    number are taken as 0 (below round-off; subnormals slow the matrix product). A non-finite c_s
    makes its row's sums non-finite at and before s, and within its chunk also after s (0·inf).

    Args:
        contributions: [N, T] c_t (float).
        discounts: ρ in [0, 1] (not checked here): a number, or N (or 1) values ([N] or [N, 1]).
        out: optional contiguous [N, T] buffer of the same dtype that G may be written into (not
            ``contributions``); use the returned tensor.

    Returns:
        [N, T] G, dtype of ``contributions``.
    """
    rows, length = contributions.shape
    dtype, device = contributions.dtype, contributions.device
    if length == 0:
        return contributions.clone() if out is None else out
    rho = torch.as_tensor(discounts, dtype=dtype, device=device).reshape(-1)  # [N] or [1]
    if rho.numel() > 1 and bool((rho == rho[0]).all()):
        rho = rho[:1]  # one matrix for the whole batch
    if rho.numel() > 1:  # one C×C matrix per row would cost N·C² memory: the general scan instead
        return reverse_affine_scan(contributions, rho.unsqueeze(1).expand(rows, length).contiguous())
    size = min(SCAN_CHUNK, -(-length // 8) * 8)
    chunks = -(-length // size)
    padded = chunks * size
    if padded != length:  # c = 0 past the end: G there is 0 and nothing flows back
        contributions = torch.nn.functional.pad(contributions, (0, padded - length))
        out = None
    # powers[0, k] = ρ^k for k = 0..C, then one 0 column (index C + 1) for the zero triangle
    powers = torch.cat([torch.ones(rho.numel(), 1, dtype=dtype, device=device),
                        rho.unsqueeze(1).expand(-1, size)], dim=1).cumprod(dim=1)  # [1, C+1]
    powers.masked_fill_(powers < torch.finfo(dtype).tiny, 0.0)
    powers = torch.nn.functional.pad(powers, (0, 1))  # [1, C+2]
    offsets = torch.arange(size, device=device)
    offsets = offsets.unsqueeze(1) - offsets.unsqueeze(0)  # [C, C] j − i at [j, i]
    kernel = powers[0, torch.where(offsets >= 0, offsets, size + 1)]  # [C, C] ρ^{j−i}, 0 above the diagonal
    blocks = contributions.reshape(rows, chunks, size)  # [N, K, C]
    if out is None:
        sums = torch.matmul(blocks, kernel)  # [N, K, C] chunk-local sums
    else:
        sums = out.view(rows, chunks, size)
        torch.matmul(blocks, kernel, out=sums)
    if chunks > 1:
        across = powers[0, size].expand(rows, chunks).contiguous()  # [N, K] ρ^C
        at_start = reverse_affine_scan(sums[:, :, 0].contiguous(), across)  # [N, K] G at each chunk's first token
        incoming = torch.nn.functional.pad(at_start[:, 1:], (0, 1))  # [N, K] G after each chunk
        tail = powers[0, size - torch.arange(size, device=device)]  # [C] ρ^{C−i}
        sums.addcmul_(incoming.unsqueeze(2), tail)
    return sums.reshape(rows, padded)[:, :length]


def pack_scored(scored: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor | None:
    """Where each token goes when every row's scored tokens are packed to the left, or None if they already are.

    Returns None when the scored tokens of every row are a prefix (no 0 before a 1: the GRPO
    layout, right padding). Otherwise an int64 [N, T] tensor P with P_t = the number of scored
    tokens before t: a scored token's packed position, and for a token with mask 0 the packed
    position of the first scored token after it (the row's count past its last one). Pack with
    ``zeros.scatter_add_(1, P, x.masked_fill(~scored, 0))`` (exact: each slot gets one value plus
    zeros) and read a packed result back per token with ``packed.gather(1, P)``.

    Args:
        scored: [N, T] bool.
        workspace: where P and the check's buffer live (default: fresh tensors).
    """
    rows, length = scored.shape
    workspace = workspace or Workspace(scored.device, reuse=False)
    if length < 2:
        return None
    rises = torch.gt(scored[:, 1:], scored[:, :-1], out=workspace.take("rises", (rows, length - 1), torch.bool))
    if not bool(rises.any()):
        return None
    before = workspace.take("positions", (rows, length), torch.int64).copy_(scored).cumsum_(dim=1)  # up to t
    return before.sub_(scored.view(torch.uint8))  # [N, T] scored tokens before t
