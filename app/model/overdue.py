"""What an overdue workflow is waiting for, in words (the listing, the dashboard, events)."""

from __future__ import annotations

from datetime import datetime

from app.model.state import Api
from app.model.times import display

# The kinds of overdue (sql/migrations/0012_overdue_in_one_place.sql decides which applies).
KINDS = ("failover_overdue", "outcome_overdue", "final_report_overdue")


def reason(kind: str, api: str | None, step: int | None, since: datetime) -> str:
    what = f"{'item' if api == Api.MESSAGES else 'step'} {step}"
    if kind == "failover_overdue":
        if api == Api.MESSAGES:
            return f"{what} was due when the item before it failed, at {display(since)}"
        return f"{what}: its failover was due at {display(since)}"
    if kind == "outcome_overdue":
        return f"{what} was submitted at {display(since)} and has neither succeeded nor failed"
    return f"decided by its definition at {display(since)}, and no final report has come"
