from __future__ import annotations

import asyncio
import itertools

import pytest

from pipeline.http.limiter import PACE, AdaptiveLimiter


class Clock:
    """Virtual time: sleeping advances it, so pacing is checked exactly, not by wall clock."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


def test_window_halves_once_per_burst_and_grows_back() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(16, clock=clock)
    lim.on_rate_limited()
    lim.on_rate_limited()  # same moment: one congestion event, one halving
    assert lim.window == 8
    assert (lim.shrinks, lim.rate_limited) == (1, 2)
    clock.t += 2
    lim.on_rate_limited()
    assert lim.window == 4
    assert lim.paused_until == 0.0  # a 429 alone pauses nobody but its own request
    for _ in range(200):
        lim.on_success()
    assert lim.window == 16


def test_window_never_below_one_and_the_pace_recovers() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(2, rpm=60, clock=clock)
    for _ in range(10):
        clock.t += 5
        lim.on_rate_limited()
    assert lim.window == 1
    assert lim.rate_factor == pytest.approx(0.9**10)
    for _ in range(100):
        lim.on_success()
    assert lim.rate_factor == 1.0


def test_ratelimit_headers_pause_until_reset() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(4, clock=clock)
    lim.observe_headers({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "9s"})
    assert lim.paused_until == 0.0
    lim.observe_headers({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s"})
    assert lim.paused_until == clock.t + 90


def test_in_flight_never_exceeds_the_window() -> None:
    async def main() -> int:
        lim = AdaptiveLimiter(3)
        peak = 0

        async def one() -> None:
            nonlocal peak
            async with lim.slot():
                peak = max(peak, lim.in_flight)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(one() for _ in range(50)))
        assert lim.in_flight == 0
        return peak

    assert asyncio.run(main()) == 3


def test_rpm_paces_requests_evenly_just_under_the_cap() -> None:
    """600 rpm: no burst (a sliding-window server would count it), then one request
    every 0.1 s / PACE."""
    clock = Clock()

    async def main() -> list[float]:
        lim = AdaptiveLimiter(100, rpm=600, clock=clock, sleep=clock.sleep)
        times = []
        for _ in range(30):
            async with lim.slot():
                times.append(clock.t - 1000.0)
        return times

    times = asyncio.run(main())
    assert times[:2] == [0.0, pytest.approx(0.1 / PACE)]
    assert all(b - a == pytest.approx(0.1 / PACE) for a, b in itertools.pairwise(times))


def test_a_limit_from_the_headers_is_learned_and_paced() -> None:
    """Told nothing: the first answers say the limit; what was already sent in the last
    second counts against it."""
    clock = Clock()

    async def main() -> list[float]:
        lim = AdaptiveLimiter(100, clock=clock, sleep=clock.sleep)
        times = []
        for i in range(20):
            async with lim.slot():
                times.append(clock.t - 1000.0)
            if i == 9:  # ten went out at once, then an answer said: 600 per minute
                lim.observe_headers({"x-ratelimit-limit-requests": "600"})
        return times

    times = asyncio.run(main())
    gap = 0.1 / PACE
    assert times[:10] == [0.0] * 10
    assert times[10] == pytest.approx(10 * gap)  # the debt of the ten already sent
    assert all(b - a == pytest.approx(gap) for a, b in itertools.pairwise(times[10:]))


def test_a_given_rpm_below_the_learned_limit_wins() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(10, rpm=60, clock=clock)
    lim.observe_headers({"x-ratelimit-limit-requests": "6000"})
    assert lim._rpm is not None
    assert lim._rpm.rate == pytest.approx(PACE)


def test_tpm_counts_tokens() -> None:
    clock = Clock()

    async def main() -> list[float]:
        lim = AdaptiveLimiter(100, tpm=60_000, clock=clock, sleep=clock.sleep)  # 1000 tokens/s
        times = []
        for _ in range(5):
            async with lim.slot(cost=500):
                times.append(clock.t - 1000.0)
        return times

    # 1000 tokens of burst: three requests of 500 go at once (the third into debt), then
    # each waits for the debt to be repaid at 1000 tokens/s.
    assert asyncio.run(main()) == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0])


def test_a_429_with_an_empty_budget_pauses_every_dispatch() -> None:
    clock = Clock()

    async def main() -> float:
        lim = AdaptiveLimiter(4, clock=clock, sleep=clock.sleep)
        lim.on_rate_limited()
        lim.observe_headers(
            {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "7s"}
        )
        assert lim.held_back() == "paused by the server"
        async with lim.slot():
            return clock.t - 1000.0

    assert asyncio.run(main()) == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("reset", "paused_s"),
    [
        ("99999", 30.0),  # huge: capped
        ("1e9", 0.0),  # an epoch time (2001), long past: no wait
        ("inf", 0.0),  # not a time: ignored
        ("nan", 0.0),
        ("-5", 0.0),
        ("1h", 30.0),
        ("2s", 2.0),
    ],
)
def test_every_reset_the_server_gives_is_capped(reset: str, paused_s: float) -> None:
    clock = Clock()
    lim = AdaptiveLimiter(4, clock=clock, max_pause=30.0)
    lim.observe_headers(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": reset}
    )
    assert max(lim.paused_until - clock.t, 0.0) == pytest.approx(paused_s)


def test_an_epoch_reset_in_the_near_future_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr("pipeline.http.waits.time.time", lambda: 1_800_000_000.0)
    lim = AdaptiveLimiter(4, clock=clock, max_pause=30.0)
    lim.observe_headers(
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1800000012"}
    )
    assert lim.paused_until - clock.t == pytest.approx(12.0)
    lim.observe_headers(
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1800099999"}
    )
    assert lim.paused_until - clock.t == pytest.approx(30.0)


def test_a_long_pause_is_capped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    lim = AdaptiveLimiter(4, clock=clock, max_pause=20.0)
    empty = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "3600"}
    lim.observe_headers(empty)
    assert lim.paused_until - clock.t == 20.0
    lim.observe_headers(empty)
    clock.t += 1
    lim.observe_headers(empty)  # extends the same pause: not logged again
    assert lim.paused_until - clock.t == 20.0
    assert caplog.text.count("pausing all requests for 20 s") == 1


def test_paced_at_a_known_limit_an_empty_window_costs_one_request_not_a_pause() -> None:
    """A sliding window caught full for a moment: a request it admitted costs nothing,
    one it refused costs one interval; paused for its reset, everyone lost up to a
    second of requests (issue 25, item 15). A long reset is a spent budget: paused."""
    clock = Clock()
    blip = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "400ms"}

    async def main() -> list[float]:
        lim = AdaptiveLimiter(64, rpm=6000, clock=clock, sleep=clock.sleep)
        times = []
        for i in range(6):
            async with lim.slot():
                times.append(clock.t - 1000.0)
            if i == 1:
                lim.observe_headers(blip)  # on a success: nothing
            if i == 3:
                lim.observe_headers(blip, refused=True)  # on a 429: one interval
        lim.observe_headers(
            {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "5s"}
        )
        assert lim.held_back() == "paused by the server"
        return times

    gap = 0.01 / PACE
    assert asyncio.run(main()) == pytest.approx([0.0, gap, 2 * gap, 3 * gap, 5 * gap, 6 * gap])
