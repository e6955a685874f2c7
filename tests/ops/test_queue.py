"""EmbeddingQueue: FIFO order, overflow, exact state round trip.

Shapes: N rows pushed, D dims.
"""

import pytest
import torch

from vice.ops.queue import EmbeddingQueue


def rows(start, n, d=3):
    """Rows whose first value is their number: start, start + 1, ..."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, d).clone()


def numbers(queue):
    return queue.tensor()[:, 0].tolist()


def test_empty_queue_holds_zero_rows():
    queue = EmbeddingQueue(capacity=5, dim=3)
    assert len(queue) == 0 and queue.tensor().shape == (0, 3)


def test_newest_push_comes_first_and_keeps_its_order():
    queue = EmbeddingQueue(capacity=10, dim=3)
    queue.push(rows(0, 2))
    queue.push(rows(10, 3))
    assert numbers(queue) == [10, 11, 12, 0, 1] and len(queue) == 5


def test_overflow_drops_the_oldest_rows():
    queue = EmbeddingQueue(capacity=4, dim=3)
    queue.push(rows(0, 3))
    queue.push(rows(10, 3))
    assert numbers(queue) == [10, 11, 12, 0] and len(queue) == 4
    queue.push(rows(20, 1))
    assert numbers(queue) == [20, 10, 11, 12]


def test_a_push_larger_than_the_capacity_keeps_its_first_rows():
    queue = EmbeddingQueue(capacity=4, dim=3)
    queue.push(rows(0, 2))
    queue.push(rows(10, 6))
    assert numbers(queue) == [10, 11, 12, 13]


def test_returned_tensor_is_not_changed_by_later_pushes():
    queue = EmbeddingQueue(capacity=4, dim=3)
    queue.push(rows(0, 2))
    before = queue.tensor()
    queue.push(rows(10, 3))
    assert before[:, 0].tolist() == [0, 1]


def test_push_detaches_and_casts_to_the_queue_dtype():
    queue = EmbeddingQueue(capacity=4, dim=3, dtype=torch.float64)
    x = rows(0, 2).requires_grad_()
    queue.push(x * 2)
    held = queue.tensor()
    assert held.dtype == torch.float64 and not held.requires_grad
    assert held[:, 0].tolist() == [0.0, 2.0]


def test_zero_capacity_queue_stays_empty():
    queue = EmbeddingQueue(capacity=0, dim=3)
    queue.push(rows(0, 5))
    assert len(queue) == 0 and queue.tensor().shape == (0, 3)


def test_push_rejects_rows_of_the_wrong_width():
    queue = EmbeddingQueue(capacity=4, dim=3)
    with pytest.raises(ValueError, match=r"expects \(N, 3\) rows, got \(2, 4\)"):
        queue.push(torch.zeros(2, 4))


def test_state_round_trip_through_torch_save_with_weights_only(tmp_path):
    queue = EmbeddingQueue(capacity=6, dim=3)
    queue.push(rows(0, 4))
    queue.push(rows(10, 3))
    torch.save(queue.state_dict(), tmp_path / "queue.pt")

    restored = EmbeddingQueue(capacity=6, dim=3)
    restored.load_state_dict(torch.load(tmp_path / "queue.pt", weights_only=True))
    assert len(restored) == len(queue) == 6
    assert torch.equal(restored.tensor(), queue.tensor())
    # Both continue identically, including rows held but not yet visible after a partial fill.
    for q in (queue, restored):
        q.push(rows(20, 2))
    assert torch.equal(restored.tensor(), queue.tensor())
    assert numbers(restored) == [20, 21, 10, 11, 12, 0]


def test_state_of_a_partly_filled_queue_restores_its_count():
    queue = EmbeddingQueue(capacity=6, dim=3)
    queue.push(rows(0, 2))
    restored = EmbeddingQueue(capacity=6, dim=3)
    restored.load_state_dict(queue.state_dict())
    assert len(restored) == 2 and numbers(restored) == [0, 1]


def test_state_dict_is_a_copy():
    queue = EmbeddingQueue(capacity=3, dim=3)
    queue.push(rows(0, 3))
    state = queue.state_dict()
    state["buffer"].zero_()
    assert numbers(queue) == [0, 1, 2]


def test_load_rejects_a_queue_of_another_size():
    state = EmbeddingQueue(capacity=6, dim=3).state_dict()
    with pytest.raises(ValueError, match=r"holds a \(6, 3\) buffer, this queue is \(5, 3\)"):
        EmbeddingQueue(capacity=5, dim=3).load_state_dict(state)


def test_to_moves_the_rows():
    queue = EmbeddingQueue(capacity=3, dim=3).to("cpu")
    queue.push(rows(0, 1))
    assert queue.device == torch.device("cpu") and numbers(queue) == [0]
