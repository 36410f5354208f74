"""The read API's query arguments: a whole number or a number of seconds in a range, or a 400
naming the argument (one wording for every endpoint)."""

from __future__ import annotations

import math

from flask import request

from app.errors import ApiError


def whole(name: str, default: int, least: int, most: int) -> int:
    raw = request.args.get(name, str(default))
    if not (raw.isascii() and raw.isdigit()) or not least <= int(raw) <= most:
        raise ApiError(
            400, f"{name} must be a whole number from {least} to {most}.", {name: ["Out of range."]}
        )
    return int(raw)


def seconds(name: str, most: float) -> float:
    """Seconds from 0 to `most` (0 when absent)."""
    raw = request.args.get(name)
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= most:  # NaN fails too
        raise ApiError(
            400,
            f"{name} must be a number of seconds from 0 to {most:g}.",
            {name: ["Out of range."]},
        )
    return value
