"""The budget cap: the output folder's spend never passes `[limits] max_cost_usd`.

A row reserves its worst case before its first attempt: its prompt tokens as estimated
(scaled by what the server has billed against the estimate so far) plus `n * max_tokens`
of completion, at the model's prices. It settles to what it really cost when done, so
spend plus the reservations of everything in flight stays under the cap. Rows in flight
are valued at the ratio learned since they were sent, and with a cap the first row goes
alone, so the cap holds even when the server bills more than the estimate.
"""

from __future__ import annotations

import asyncio


class Stopping(Exception):
    """The run stopped dispatching; this row stays pending for the next run."""


class BudgetReached(Stopping):
    """Sending this row could take the output folder's spend past the cap."""


class Budget:
    def __init__(
        self, cap_usd: float | None, spent_usd: float = 0.0, *, measure: bool = False
    ) -> None:
        self.cap_usd = cap_usd
        # Count every row's prompt even without a cap: a pilot measures the ratio.
        self.measure = measure or cap_usd is not None
        self.spent_usd = spent_usd
        self.refused_usd = 0.0  # the reservation that did not fit, for the stop message
        self.refused_in_flight_usd = 0.0  # what rows in flight held when it did not fit
        self._estimated = 0
        self._billed = 0
        # Rows in flight, kept as estimated prompt tokens and the rest in USD, so that
        # they are valued at the ratio learned since they were sent, not at the old one.
        self._rows = 0
        self._prompt = 0
        self._fixed_usd = 0.0
        self._usd_per_prompt_token = 0.0
        self._first_settled = asyncio.Event()
        self._settled = asyncio.Event()  # set (and replaced) each time a row settles

    @property
    def prompt_ratio(self) -> float:
        """Billed over estimated prompt tokens so far, never below 1: the server billed
        more than the estimate in a real run, and the cap must hold all the same."""
        return max(1.0, self._billed / self._estimated) if self._estimated else 1.0

    @property
    def learned_ratio(self) -> float | None:
        """Billed over estimated prompt tokens as measured (None before any answer): what
        an estimate scales its prompt tokens by after a pilot."""
        return self._billed / self._estimated if self._estimated else None

    @property
    def reserved_usd(self) -> float:
        return self._usd_per_prompt_token * self.prompt_ratio * self._prompt + self._fixed_usd

    def observe(self, estimated_prompt: int, billed_prompt: int) -> None:
        """What the server billed for a prompt the estimate put at `estimated_prompt`."""
        if estimated_prompt > 0:
            self._estimated += estimated_prompt
            self._billed += billed_prompt

    async def ready(
        self, prompt_tokens: int, fixed_usd: float, usd_per_prompt_token: float
    ) -> None:
        """Wait until a row of this worst case may be reserved. With a cap, one row goes
        first: the ratio of billed to estimated is unknown until an answer arrives, and a
        whole first wave valued at 1:1 could pass a small cap before it is learned. (A
        shared budget, `leased.LeasedBudget`, also tops up its slice here.)"""
        if self.cap_usd is None:
            return
        await self._first_goes_alone()
        # A row that does not fit beside those in flight waits for them to settle (they
        # usually cost far less than their worst case): the run stops only when the row
        # does not fit with nothing else in flight.
        while self._rows and not self._fits(prompt_tokens, fixed_usd, usd_per_prompt_token):
            await self._settled.wait()

    async def _first_goes_alone(self) -> None:
        if self._rows and not self._first_settled.is_set():
            await self._first_settled.wait()

    def _worst(self, prompt_tokens: int, fixed_usd: float, usd_per_prompt_token: float) -> float:
        return usd_per_prompt_token * self.prompt_ratio * prompt_tokens + fixed_usd

    def _fits(self, prompt_tokens: int, fixed_usd: float, usd_per_prompt_token: float) -> bool:
        self._usd_per_prompt_token = usd_per_prompt_token
        worst = self._worst(prompt_tokens, fixed_usd, usd_per_prompt_token)
        return self.cap_usd is None or self.spent_usd + self.reserved_usd + worst <= self.cap_usd

    def reserve(self, prompt_tokens: int, fixed_usd: float, usd_per_prompt_token: float) -> None:
        """Hold a row's worst case: its estimated prompt (valued at the learned ratio) and
        `fixed_usd` (its n * max_tokens of completion), or raise BudgetReached."""
        if not self._fits(prompt_tokens, fixed_usd, usd_per_prompt_token):
            self.refused_usd = self._worst(prompt_tokens, fixed_usd, usd_per_prompt_token)
            self.refused_in_flight_usd = self.reserved_usd
            raise BudgetReached
        self._rows += 1
        self._prompt += prompt_tokens
        self._fixed_usd += fixed_usd

    def settle(self, prompt_tokens: int, fixed_usd: float, actual_usd: float) -> None:
        self._rows -= 1
        self._prompt -= prompt_tokens
        self._fixed_usd -= fixed_usd
        self.spent_usd += actual_usd
        self._first_settled.set()
        self._settled.set()
        self._settled = asyncio.Event()
