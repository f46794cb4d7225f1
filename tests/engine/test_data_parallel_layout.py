"""Where data-parallel replicas run, from vLLM's flags: the layouts and vLLM's refusals."""

from __future__ import annotations

import pytest

from cserve.cli.args import parse_serve_args
from cserve.engine.data_parallel_layout import layout_from_args


def layout(*flags: str):
    return layout_from_args(parse_serve_args(["/m", *flags]))


def test_one_node_starts_every_replica():
    a = layout("-dp", "3")
    assert (a.size, a.local, a.start, a.address, a.headless, a.hybrid) == (3, 3, 0, None, False, False)


def test_head_node_listens_for_the_other_nodes():
    a = layout("-dp", "4", "-dpl", "2", "-dpa", "10.0.0.1", "-dpp", "13345")
    assert (a.size, a.local, a.start, a.address) == (4, 2, 0, ("10.0.0.1", 13345))
    assert layout("-dp", "4", "-dpl", "0").address == ("127.0.0.1", 29550)  # vLLM's defaults; API server only


def test_headless_node():
    a = layout("--headless", "-dp", "4", "-dpl", "2", "-dpr", "2", "-dpa", "10.0.0.1", "-dpp", "13345")
    assert (a.local, a.start, a.headless, a.hybrid) == (2, 2, True, False)


def test_a_start_rank_without_headless_means_hybrid():
    a = layout("-dp", "4", "-dpl", "2", "-dpr", "2")
    assert (a.size, a.local, a.start, a.hybrid, a.address, a.first_label) == (2, 2, 2, True, None, 2)
    a = layout("-dp", "4", "-dpl", "2", "--data-parallel-hybrid-lb")
    assert (a.size, a.hybrid, a.first_label) == (2, True, 0)


@pytest.mark.parametrize("flags,message", [
    (["--headless", "--data-parallel-hybrid-lb", "-dp", "2", "-dpl", "1"],
     "data_parallel_hybrid_lb is not applicable in headless mode"),
    (["--headless", "-dp", "2", "-dpl", "0"], "data_parallel_size_local must be > 0 in headless mode"),
    (["--headless", "-dp", "2", "--api-server-count", "2"], "api_server_count can't be set in headless mode"),
    (["-dp", "2", "--data-parallel-hybrid-lb"], "data_parallel_size_local must be set to use data_parallel_hybrid_lb"),
    (["-dp", "2", "--data-parallel-rank", "1"], "Non-MoE models do not support external data parallel mode"),
    (["-dp", "2", "--data-parallel-external-lb"], "Non-MoE models do not support external data parallel mode"),
    (["-dp", "2", "--data-parallel-hybrid-lb", "--data-parallel-external-lb", "-dpl", "1"],
     "data_parallel_hybrid_lb and data_parallel_external_lb cannot both be True."),
    (["-dp", "2", "-dpl", "3"], "data_parallel_size_local (3) must be between 0 and data_parallel_size (2)"),
    (["--headless", "-dp", "2", "-dpl", "2", "-dpr", "1"], "must not exceed data_parallel_size (2)"),
])
def test_refusals(flags, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layout(*flags)
