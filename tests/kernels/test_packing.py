"""pack_spikes / unpack_spikes: round trip and agreement with numpy.packbits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snncompiler.errors import SnncError
from snncompiler.kernels import pack_spikes, unpack_spikes


@settings(max_examples=100, deadline=None)
@given(T=st.integers(0, 5), shape=st.lists(st.integers(0, 7), min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1))
def test_round_trip_and_numpy_layout(T, shape, seed):
    g = torch.Generator().manual_seed(seed)
    spikes = (torch.rand((T, *shape), generator=g) < 0.4).to(torch.uint8)
    packed = pack_spikes(spikes)
    n = int(np.prod(shape))
    assert packed.dtype == torch.uint8 and packed.shape == (T, (n + 7) // 8)
    expected = np.packbits(spikes.reshape(T, n).numpy(), axis=1, bitorder="little")
    assert np.array_equal(packed.numpy(), expected.reshape(T, (n + 7) // 8))
    assert torch.equal(unpack_spikes(packed, spikes.shape), spikes)


def test_nonzero_values_count_as_spikes_and_dtype():
    s = torch.tensor([[0.0, 0.7, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]])
    packed = pack_spikes(s)
    assert packed.tolist() == [[0b00000110, 0b1]]
    assert unpack_spikes(packed, s.shape, dtype=torch.bool).tolist() == [[False, True, True] + [False] * 5 + [True]]


def test_bad_arguments_raise():
    with pytest.raises(SnncError, match="spikes"):
        pack_spikes(torch.tensor(1.0))
    with pytest.raises(SnncError, match="shape"):
        unpack_spikes(torch.zeros(2, 3, dtype=torch.uint8), (2, 30))
    with pytest.raises(SnncError, match="packed"):
        unpack_spikes(torch.zeros(2, 3), (2, 20))
