"""The speculation governor: drafts are verified only where the measured step times and acceptance
say they raise the output tokens per second. Fed synthetic step times (no clocks): memory-bound
steps (drafts nearly free) keep drafting, compute-bound ones stop, figures never measured are tried
once, expired ones are tried again, vLLM's disable_by_batch_size wins, and in the scheduler drafts
left unverified still teach the acceptance rate, so speculation switched off comes back."""

from __future__ import annotations

import pytest

from cserve import _core
from cserve._core.testing import SchedulerConfig, SchedulerHarness, SpeculationGovernor


def memory_bound(t: int) -> float:  # weights dominate: extra tokens cost little
    return 3e-3 + 0.1e-3 * t


def compute_bound(t: int) -> float:  # every token costs the same
    return 0.5e-3 * t


def measure(g, cost, counts, times: int = 1):
    for _ in range(times):
        for t in counts:
            g.record_step(t, cost(t))


def good(d: int) -> tuple[int, int, int]:  # d drafts of a request that accepted 90 of 100
    return (d, 90, 100)


def test_acceptance_rate_starts_at_one_half_and_follows_the_drafts():
    g = SpeculationGovernor()
    assert g.acceptance_rate() == pytest.approx(0.5)
    for _ in range(50):
        g.record_draft(5, 5)
    assert g.acceptance_rate() > 0.95
    # A request's own record outweighs the engine-wide rate once it has some.
    assert g.acceptance_rate(0, 40) < 0.1


def test_the_plain_step_is_measured_first_then_unmeasured_counts_are_tried():
    g = SpeculationGovernor()
    assert g.plan(1, [good(5)]) == [0]  # no yardstick yet
    g.record_step(1, 3e-3)
    assert g.step_seconds(1) == pytest.approx(3e-3) and g.step_seconds(6) == pytest.approx(3e-3)
    assert g.plan(1, [good(5)]) == [5]  # six tokens never measured: tried


def test_one_stream_keeps_drafting_when_drafts_are_cheap():
    g = SpeculationGovernor()
    measure(g, memory_bound, range(1, 7))
    assert g.plan(1, [good(5)]) == [5]
    # A poor acceptance (a = 22 / 104) still pays for two: (1 + a + a^2) / 3.3 ms beats
    # (1 + a) / 3.2 ms, 1 / 3.1 ms and (1 + a + a^2 + a^3) / 3.4 ms.
    assert g.plan(1, [(5, 20, 100)]) == [2]
    assert g.step_seconds(4) == pytest.approx(memory_bound(4))
    assert g.step_seconds(3) == pytest.approx(memory_bound(3))


def test_sixteen_streams_stop_drafting_when_tokens_cost_alike():
    g = SpeculationGovernor()
    measure(g, compute_bound, [16, 96])
    assert g.plan(16, [good(5)] * 16) == [0] * 16
    # Between measured counts the cost is interpolated: 56 tokens is halfway.
    assert g.step_seconds(56) == pytest.approx((compute_bound(16) + compute_bound(96)) / 2)


def test_where_some_drafts_are_free_the_likeliest_are_verified():
    # Flat up to 24 tokens, then every token costs a step's 1/8th.
    g = SpeculationGovernor()
    knee = {t: 3e-3 if t <= 24 else 3e-3 * (1 + (t - 24) / 8) for t in range(16, 97)}
    measure(g, knee.__getitem__, knee)
    plan = g.plan(16, [(5, 95, 100)] + [(5, 10, 100)] * 15)
    # The 8 free tokens go to the request that is nearly always right first.
    assert sum(plan) == 8 and plan[0] == 5


def test_figures_expire_so_speculation_switched_off_is_tried_again():
    g = SpeculationGovernor(expiry_steps=100)
    measure(g, compute_bound, [16, 96])
    assert g.plan(16, [good(5)] * 16) == [0] * 16
    # Plain steps only: after 100 of them the figure of 96 tokens is gone, and drafts are tried.
    for step in range(100):
        g.record_step(16, compute_bound(16))
        assert g.plan(16, [good(5)] * 16) == ([0] * 16 if step < 99 else [5] * 16), step
    # That try measures it again: off for another 100 steps.
    g.record_step(96, compute_bound(96))
    assert g.plan(16, [good(5)] * 16) == [0] * 16


def test_disable_by_batch_size_wins_and_no_rule_verifies_everything():
    g = SpeculationGovernor(automatic=False, disable_by_batch_size=2)
    assert g.plan(2, [(3, 0, 0), (4, 0, 0)]) == [3, 4]
    assert g.plan(3, [(3, 0, 0), (4, 0, 0), (0, 0, 0)]) == [0, 0, 0]
    g = SpeculationGovernor(disable_by_batch_size=4)
    measure(g, memory_bound, range(1, 30))
    assert g.plan(5, [good(5)] * 5) == [0] * 5
    assert g.plan(4, [good(5)] * 4) == [5] * 4


def scheduler(**kw) -> SchedulerHarness:
    c = SchedulerConfig()
    c.max_num_batched_tokens = 64
    c.max_model_len = 256
    c.speculative_auto_disable = True
    for k, v in kw.items():
        setattr(c, k, v)
    return SchedulerHarness(c, 100, 4, False, "sha256", [])


def test_unverified_drafts_still_teach_acceptance_in_the_scheduler():
    h = scheduler()
    p = _core.SamplingParams()
    p.max_tokens = 200
    h.add_request("r", list(range(10, 20)), p)
    h.schedule()
    h.update_speculative({"r": [5]}, {"r": [1, 2, 3]}, step_seconds=memory_bound(10))  # prefill: not a figure
    h.schedule()
    assert h.scheduled_drafts() == {"r": []}  # the plain step is measured first
    h.update_speculative({"r": [6]}, {"r": [1, 2, 3]}, step_seconds=memory_bound(1))
    h.schedule()
    assert h.scheduled_drafts() == {"r": [1, 2, 3]}  # four tokens never measured: tried
    # Every draft rejected, step after step: drafts stop.
    next_token = 100
    for _ in range(30):
        drafts = h.scheduled_drafts()["r"]
        h.update_speculative({"r": [next_token]}, {"r": [1, 2, 3]},
                             step_seconds=memory_bound(1 + len(drafts)))
        next_token += 1
        h.schedule()
    assert h.scheduled_drafts() == {"r": []}
    # Unverified drafts that the following tokens match raise the rate again: drafts come back.
    out_tokens = [1, 2, 3] * 30
    for i in range(0, len(out_tokens)):
        if h.scheduled_drafts()["r"]:
            break
        h.update_speculative({"r": [out_tokens[i]]}, {"r": out_tokens[i + 1:i + 4]}, step_seconds=memory_bound(1))
        h.schedule()
    assert h.scheduled_drafts()["r"] != []
    assert i < 40, "the rate should recover within a few dozen matching tokens"


def test_costly_proposals_are_weighed_with_the_drafting_steps_own_times():
    # A draft model: steps that verify drafts also pay the draft's forwards, timed apart from plain
    # steps. Cheap drafting keeps drafting; drafting that costs more than its accepted tokens stops.
    def plan(spec_seconds):
        g = SpeculationGovernor(proposals_cost=True)
        g.record_step(16, 0.020)  # a plain step of 16 requests
        assert g.plan(16, [good(3)] * 16) == [3] * 16  # drafting never measured: tried
        g.record_step(64, spec_seconds, speculative=True)
        return g.plan(16, [good(3)] * 16)

    assert plan(0.030) == [3] * 16  # 16 + ~40 tokens in 30 ms beats 16 in 20 ms
    assert plan(0.100) == [0] * 16  # the draft's forwards cost more than its tokens gain
    # Fewer drafts cost no less than the measured drafting step (the draft's forwards dominate).
    g = SpeculationGovernor(proposals_cost=True)
    g.record_step(16, 0.020)
    g.record_step(64, 0.100, speculative=True)
    assert g.step_seconds(16) == pytest.approx(0.020)


def test_costly_proposals_stop_with_the_drafts_in_the_scheduler():
    # A draft model's proposals cost forwards: the scheduler asks for them only where its plan
    # would verify some next step, and tells the runner which requests ended (their draft state).
    h = scheduler(speculative_proposals_cost=True, num_speculative_tokens=3)
    p = _core.SamplingParams()
    p.max_tokens = 200
    h.add_request("r", list(range(10, 20)), p)
    h.schedule()
    assert not h.propose_drafts  # no plain step measured yet: the yardstick comes first
    h.update_speculative({"r": [5]}, {})
    h.schedule()
    assert not h.propose_drafts
    h.update_speculative({"r": [6]}, {}, step_seconds=0.010)  # the plain one-request step
    h.schedule()
    assert h.propose_drafts  # drafting never measured: tried
    h.update_speculative({"r": [7]}, {"r": [1, 2, 3]}, step_seconds=0.5)  # proposes, verifies none: not a figure
    h.schedule()
    assert h.scheduled_drafts() == {"r": [1, 2, 3]} and h.propose_drafts
    h.update_speculative({"r": [1, 2, 3, 8]}, {"r": [1, 2, 3]}, step_seconds=0.100)  # drafting costs 10x
    h.schedule()
    assert h.scheduled_drafts() == {"r": []} and not h.propose_drafts
    h.update_speculative({"r": [9]}, {})
    assert h.abort("r")
    h.add_request("s", list(range(10, 20)), p)
    h.schedule()
    assert h.num_finished_ids == 1  # "r": the runner forgets it
