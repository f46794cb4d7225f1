"""Which decode sizes a GPU engine captures as CUDA graphs (vLLM's rules); computed on any machine."""

import pytest

from cserve import _core


def sizes(**fields):
    config = _core.EngineConfig()
    for k, v in fields.items():
        setattr(config, k, v)
    return _core.testing.cudagraph_sizes(config)


def test_default_list_is_vllms_up_to_twice_max_num_seqs():
    assert sizes(max_num_seqs=256) == [1, 2, 4, *range(8, 256, 8), 256]
    assert sizes(max_num_seqs=1024) == [1, 2, 4, *range(8, 256, 8), *range(256, 513, 16)]


def test_sizes_past_the_largest_decode_step_are_dropped():
    assert sizes(max_num_seqs=20) == [1, 2, 4, 8, 16, 24]
    assert sizes(max_num_seqs=16) == [1, 2, 4, 8, 16]


def test_explicit_sizes_and_maximum():
    assert sizes(max_num_seqs=256, cudagraph_capture_sizes=[8, 1, 8, 3]) == [1, 3, 8]
    assert sizes(max_num_seqs=256, max_cudagraph_capture_size=12) == [1, 2, 4, 8]


def test_enforce_eager_captures_nothing():
    assert sizes(enforce_eager=True) == []


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="must be positive"):
        sizes(cudagraph_capture_sizes=[4, 0])
