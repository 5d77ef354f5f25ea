"""Progress bars on stderr (tqdm): the local executor's, fed row by row, and the Ray
driver's, fed the account's totals."""

from __future__ import annotations

import asyncio
import sys
import time

from pipeline.engine.captioner import Captioner
from pipeline.engine.work import Tally
from pipeline.records import ResultRow


class Progress:
    """Rows, rate, errors and dollars so far, and what holds the run back: requests in
    flight against the limiter's window, a server pause or pacing, and retries. Redrawn
    every second even when no row finishes (a long pause); its last frame shows the
    run's final figures."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, file=sys.stderr, unit="img", dynamic_ncols=True, mininterval=0.5
        )
        self.tally = Tally()
        self.captioner: Captioner | None = None
        self._last = 0.0

    def __call__(self, row: ResultRow, tally: Tally) -> None:
        self.tally = tally
        self.bar.update(1)
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            self.bar.set_postfix_str(self.describe(), refresh=False)

    def describe(self) -> str:
        tally = self.tally
        text = f"errors={tally.errors} ${tally.cost_usd:.4f}"
        if self.captioner is not None:
            limiter = self.captioner.limiter
            text += f" in-flight={limiter.in_flight}/{int(limiter.window)}"
            if held := limiter.held_back():
                text += f" ({held})"
            if self.captioner.retries:
                text += f" retries={self.captioner.retries}"
        return text

    async def redraw_every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.bar.set_postfix_str(self.describe(), refresh=True)

    def close(self) -> None:
        self.bar.set_postfix_str(self.describe(), refresh=True)
        self.bar.close()


class TotalsBar:
    """The Ray driver's bar: drawn from the account's running totals."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, file=sys.stderr, unit="img", dynamic_ncols=True)

    def draw(self, totals: dict[str, float]) -> None:
        done = int(totals.get("ok", 0) + totals.get("errors", 0))
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(
            f"errors={int(totals.get('errors', 0))} ${totals.get('cost_usd', 0.0):.4f} "
            f"429s={int(totals.get('rate_limited', 0))}"
        )

    def close(self) -> None:
        self.bar.close()
