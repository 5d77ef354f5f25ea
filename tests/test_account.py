"""The shared account (plain Python here; one Ray actor in a run): pacing across workers,
the 429 back-off, pauses, and a budget that holds however it is leased."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from pipeline.executors.account import PACE, Account, Report


def test_send_times_are_paced_globally_whoever_asks() -> None:
    account = Account(rpm=600)  # 10 a second
    a = account.lease(4, 0, 0, Report(worker="a")).times
    b = account.lease(4, 0, 0, Report(worker="b")).times
    times = a + b
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps == pytest.approx([60 / (600 * PACE)] * 7, abs=1e-5)  # b right after a


def test_without_a_limit_times_are_now_until_a_429_sets_one() -> None:
    account = Account()
    now = time.time()
    for _ in range(10):
        times = account.lease(8, 0, 0, Report(worker="a")).times
        assert all(t <= now + 1 for t in times)
    account.lease(0, 0, 0, Report(worker="b", rate_limited=1))
    assert account.rpm is not None  # 90% of the 80 sent in the last seconds, per minute
    assert account.rpm == pytest.approx(80 / 5 * 60 * 0.9)


def test_a_429_from_one_worker_slows_everyone_and_successes_restore_the_pace() -> None:
    account = Account(rpm=600)
    account.lease(1, 0, 0, Report(worker="a", rate_limited=1))
    assert account.rate_factor == pytest.approx(0.9)
    account.lease(1, 0, 0, Report(worker="b", rate_limited=1))  # within the cooldown
    assert account.rate_factor == pytest.approx(0.9)
    account.lease(1, 0, 0, Report(worker="b", ok=10))
    assert account.rate_factor == pytest.approx(1.0)


def test_a_server_pause_holds_every_worker_capped_at_max_pause() -> None:
    account = Account(max_pause=5)
    now = time.time()
    account.lease(0, 0, 0, Report(worker="a", pause_s=3600))
    (t,) = account.lease(1, 0, 0, Report(worker="b")).times
    assert now + 4.5 < t < now + 6


def test_the_budget_holds_across_workers_whatever_they_ask() -> None:
    rng = random.Random(3)
    account = Account(cap_usd=1.0, spent_usd=0.2)
    held = {w: 0.0 for w in "abcd"}
    for _ in range(2000):
        w = rng.choice("abcd")
        spend = min(held[w], rng.random() * 0.05)
        give_back = rng.random() < 0.1
        report = Report(worker=w, cost_usd=spend, returned_usd=held[w] - spend if give_back else 0)
        held[w] = 0.0 if give_back else held[w] - spend
        lease = account.lease(0, 0, rng.random() * 0.2, report)
        held[w] += lease.grant_usd
        assert account.spent_usd + sum(held.values()) <= 1.0 + 1e-9
    assert account.spent_usd > 0.7  # the budget was used, not just refused


def test_a_stop_reaches_every_worker_at_its_next_lease() -> None:
    account = Account()
    account.stop("budget", "budget cap reached")
    lease = account.lease(4, 0, 1.0, Report(worker="a"))
    assert (lease.times, lease.grant_usd, lease.stop) == ([], 0.0, ("budget", "budget cap reached"))


def test_float_residue_is_not_held_budget() -> None:
    """A worker's held budget that comes back as 5e-19, not 0, made others wait for ever."""
    account = Account(cap_usd=0.01)
    grant = account.lease(0, 0, 0.003, Report(worker="a"), need_usd=0.003).grant_usd
    assert grant == 0.003
    # Spent 0.00095, then 0.00105 and gave back 0.001: in floats 2e-19 is left.
    account.lease(0, 0, 0, Report(worker="a", cost_usd=0.00095))
    account.lease(0, 0, 0, Report(worker="a", cost_usd=0.00105, returned_usd=0.001))
    assert account.held_usd["a"] == 0.0
    account.spent_usd = 0.0099  # nearly all spent: a row of 0.001 no longer fits
    lease = account.lease(0, 0, 0.002, Report(worker="b"), need_usd=0.001)
    assert lease.stop == ("budget", "budget cap $0.01 reached")  # not told to wait
