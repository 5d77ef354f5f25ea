"""Scores of structured answers: accuracy against a truth column, and agreement with the
other variants' consensus. Pure functions over plain values (one answer per variant and
image), so `caption compare` and the tests share them.

- **Truth**: a scalar is right when it equals the truth (a truth read from a CSV as text is
  read as the answer's type first: "3" is 3, "true" is True, "[...]" a list); a list
  scores the share of elements the two share (|A and T| / |A or T|, 1 when both are
  empty); numbers also give the mean absolute error.
- **Consensus**: per image and field, the value most variants gave (a tie has none); a
  variant's agreement is the share of images with a consensus where it gave that value.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _canonical(value: Any) -> str:
    """A value as a key that compares equal for equal JSON (lists, dicts, numbers)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def as_answer_type(truth: Any, answer: Any) -> Any:
    """Truth as the answer's type, when a list file gave it as text."""
    if not isinstance(truth, str) or isinstance(answer, str) or answer is None:
        return truth
    text = truth.strip()
    if isinstance(answer, bool):
        return {"true": True, "false": False, "1": True, "0": False}.get(text.lower(), truth)
    if isinstance(answer, int | float):
        try:
            number = float(text)
        except ValueError:
            return truth
        return int(number) if isinstance(answer, int) and number.is_integer() else number
    if isinstance(answer, list | dict):
        try:
            return json.loads(text)
        except ValueError:
            return truth
    return truth


@dataclass(slots=True)
class FieldScore:
    """One variant's score on one field against truth."""

    images: int = 0  # images with both a truth and an answer
    correct: float = 0.0  # sum of per-image scores (0..1)
    abs_error: float = 0.0
    numeric: int = 0  # images where both were numbers

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.images if self.images else None

    @property
    def mae(self) -> float | None:
        return self.abs_error / self.numeric if self.numeric else None


def score(answer: Any, truth: Any) -> tuple[float, float | None]:
    """(this image's score 0..1, the absolute error when both are numbers)."""
    truth = as_answer_type(truth, answer)
    if isinstance(answer, list) and isinstance(truth, list):
        a, t = {_canonical(v) for v in answer}, {_canonical(v) for v in truth}
        union = a | t
        return (len(a & t) / len(union) if union else 1.0), None
    numbers = (int, float)
    if (
        isinstance(answer, numbers)
        and isinstance(truth, numbers)
        and not isinstance(answer, bool)
        and not isinstance(truth, bool)
    ):
        return float(answer == truth), abs(float(answer) - float(truth))
    return float(_canonical(answer) == _canonical(truth)), None


def truth_scores(
    answers: Mapping[str, Mapping[str, Any]], truth: Mapping[str, Any], field: str
) -> FieldScore:
    """`answers`: image id -> the variant's parsed answer; `truth`: image id -> truth."""
    result = FieldScore()
    for image, expected in truth.items():
        parsed = answers.get(image)
        if expected is None or not isinstance(parsed, Mapping) or field not in parsed:
            continue
        got, error = score(parsed[field], expected)
        result.images += 1
        result.correct += got
        if error is not None:
            result.numeric += 1
            result.abs_error += error
    return result


def consensus(values: list[Any]) -> tuple[Any, int] | None:
    """The value most answers gave, and how many gave it; None on a tie or no answers."""
    given = [v for v in values if v is not None]
    if not given:
        return None
    counts = Counter(_canonical(v) for v in given)
    (top, n), *rest = counts.most_common()
    if rest and rest[0][1] == n:
        return None
    return json.loads(top), n


def agreement(
    answers: Mapping[str, Mapping[str, Mapping[str, Any]]], field: str
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """`answers`: variant -> image id -> parsed answer. Returns (each variant's agreement
    with the consensus on `field`, the consensus per image)."""
    images = sorted({i for per in answers.values() for i in per})
    agreed: dict[str, list[int]] = {v: [0, 0] for v in answers}
    chosen: dict[str, Any] = {}
    for image in images:
        values = {v: _field(per.get(image), field) for v, per in answers.items()}
        found = consensus(list(values.values()))
        if found is None:
            continue
        chosen[image] = found[0]
        key = _canonical(found[0])
        for variant, value in values.items():
            if value is not None:
                agreed[variant][1] += 1
                agreed[variant][0] += _canonical(value) == key
    shares = {v: (a / n if n else None) for v, (a, n) in agreed.items()}
    return shares, chosen


def _field(parsed: Any, field: str) -> Any:
    return parsed.get(field) if isinstance(parsed, Mapping) else None
