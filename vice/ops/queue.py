"""FIFO queue of past center-view region embeddings (SwAV's queue, one per rank).

From iteration `queue_start` on, ViCE appends the stored embeddings of earlier batches to
the current center-view regions before Sinkhorn-Knopp (methods.md section 1), so that the
equal-partition constraint acts on many more samples than one small batch holds. Each rank
keeps its own queue of its own regions; the caller sizes it as the global queue length
divided by the world size (160k / 32 GPUs = 5k in the published runs), and Sinkhorn's
all-reduced sums then see every rank's queue.

Shape legend:
    M  rows currently held (M <= capacity)
    N  rows pushed at once
    D  embedding dimension
"""

from __future__ import annotations

import torch


class EmbeddingQueue:
    """Fixed-capacity FIFO of embedding rows, newest first.

    A push puts the new rows (in their given order) in front and drops the oldest rows
    beyond capacity; pushing more rows than the capacity keeps only the first `capacity`
    rows of the push. Each push builds a new buffer rather than shifting rows in place, so a
    tensor returned by `tensor()` stays valid (and unchanged) after later pushes.
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        """Creates an empty queue.

        Args:
            capacity: most rows held (this rank's share of the global queue length); 0 makes
                a queue that stays empty.
            dim: D, the embedding dimension.
            dtype: storage dtype of the rows.
            device: where the rows live.
        """
        if capacity < 0:
            raise ValueError(f"queue capacity must be >= 0, got {capacity}")
        if dim < 1:
            raise ValueError(f"queue dim must be >= 1, got {dim}")
        self.capacity = capacity
        self.dim = dim
        self._buffer_CD = torch.zeros(capacity, dim, dtype=dtype, device=device)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def device(self) -> torch.device:
        return self._buffer_CD.device

    @torch.no_grad()
    def push(self, x_ND: torch.Tensor) -> None:
        """Adds rows (detached, cast to the queue's dtype and device) as the newest entries."""
        if x_ND.ndim != 2 or x_ND.shape[1] != self.dim:
            raise ValueError(f"queue push expects (N, {self.dim}) rows, got {tuple(x_ND.shape)}")
        new_ND = x_ND.detach()[: self.capacity].to(self._buffer_CD)
        n = new_ND.shape[0]
        if n == 0:
            return
        self._buffer_CD = torch.cat([new_ND, self._buffer_CD[: self.capacity - n]])
        self._count = min(self._count + n, self.capacity)

    def tensor(self) -> torch.Tensor:
        """The rows held, newest first: (M, D), 0 rows when empty."""
        return self._buffer_CD[: self._count]

    def to(self, device: torch.device | str) -> EmbeddingQueue:
        """Moves the rows to `device` (in place); returns self."""
        self._buffer_CD = self._buffer_CD.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (loadable with torch.load(weights_only=True)); restores exactly."""
        return {
            "buffer": self._buffer_CD.clone(),
            "count": torch.tensor(self._count, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores rows and fill count saved by `state_dict` (onto this queue's device)."""
        buffer_CD = state["buffer"]
        if tuple(buffer_CD.shape) != (self.capacity, self.dim):
            raise ValueError(
                f"queue state holds a {tuple(buffer_CD.shape)} buffer, this queue is "
                f"({self.capacity}, {self.dim}); the per-rank capacity (queue length / world "
                f"size) or the embedding dim changed"
            )
        count = int(state["count"])
        if not 0 <= count <= self.capacity:
            raise ValueError(f"queue state count {count} is outside [0, {self.capacity}]")
        self._buffer_CD = buffer_CD.to(device=self.device, dtype=self._buffer_CD.dtype).clone()
        self._count = count
