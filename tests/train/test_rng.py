import io
import random

import numpy as np
import torch

from vice.train.rng import capture_rng, restore_rng


def test_capture_restore_roundtrip_through_weights_only_load():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng()
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restore_rng(torch.load(buf, weights_only=True))
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected
