"""The fake endpoint's quality knob, for trying and testing `caption compare`: each model
gets a share of images wrong (a structured answer's first field, or a caption marked as
wrong), the same images every time; and a judge that prefers the caption not marked."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pipeline.config.labels import sample_value


def right_answer(schema: dict[str, Any], digest: str, index: int = 0) -> Any:
    """The structured answer the fake gives an image when it is right (what a truth
    column for a test of `caption compare` holds)."""
    return sample_value(schema, f"{digest}{index or ''}")


def wrong_answer(value: Any, schema: dict[str, Any]) -> Any:
    """The answer with its first field changed to another value of its type."""
    props = schema.get("properties") or {}
    if not isinstance(value, dict) or not props:
        return value
    name = next(iter(props))
    prop, given = props[name], value.get(name)
    if prop.get("enum"):
        options = prop["enum"]
        other = options[(options.index(given) + 1) % len(options)] if given in options else None
    elif isinstance(given, bool):
        other = not given
    elif isinstance(given, int | float):
        other = given + 1
    elif isinstance(given, list):
        other = [*given, "wrong"]
    else:
        other = f"{given} (wrong)"
    return {**value, name: other}


def is_wrong(model: str, digest: str, rate: float) -> bool:
    """Whether `model` answers this image wrongly, at its `rate`: fixed per image, so
    reruns and tests see the same answers."""
    draw = int(hashlib.sha256(f"{model}|{digest}".encode()).hexdigest()[:8], 16) / 2**32
    return draw < rate


# A caption the quality knob spoiled says so, for the fake's judge to see.
WRONG = " (wrong)"
_JUDGED = re.compile(r"Caption A: (.*)\n\nCaption B: (.*)\Z", re.S)


def judgment(texts: list[str]) -> str | None:
    """As a judge (a prompt showing two captions, A and B): the one the knob did not
    spoil, or `tie`. None when the request is not a judge's."""
    found = next((m for t in texts if (m := _JUDGED.search(t))), None)
    if found is None:
        return None
    a_wrong, b_wrong = WRONG in found[1], WRONG in found[2]
    return "A" if b_wrong and not a_wrong else "B" if a_wrong and not b_wrong else "tie"
