"""What applying a batch changed, counted for the metrics once its transaction commits.

Pure: it compares states before and after (messages) and decisions before
and after (workflows), so a batch that is rolled back and run again counts
once, when it commits (`apply.ApplySummary.add`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from app.model.failover import Decision, Outcome
from app.model.state import MessageState, MessageStatus

# One set of channel names across the APIs, as the analytics views show them
# (sql/views/00_channel_name.sql; tests/store/test_analytics.py holds the two alike).
CHANNEL_NAMES = {"viber_service": "viber_service_msg"}
FAILED_OVER = frozenset({Outcome.FAILED, Outcome.EXPIRED})


def channel_name(channel: Any) -> str:
    if channel is None:
        return "unknown"
    name = str(getattr(channel, "value", channel))
    return CHANNEL_NAMES.get(name, name)


@dataclass
class Tally:
    # (api, channel, event): sent, delivered (read implies it), read, rejected, undeliverable
    messages: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # (api, channel): a step's message that was followed by the next step
    failovers: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (api, status): workflows that left pending for completed or error
    decided: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        self.messages.update(other.messages)
        self.failovers.update(other.failovers)
        self.decided.update(other.decided)

    def message_changed(self, before: MessageState, after: MessageState) -> None:
        """Count what a message reached for the first time."""
        key = ((after.api or before.api or "dispatch"), channel_name(after.channel))
        if before.first_event_at is None and after.first_event_at is not None:
            self.messages[(*key, "sent")] += 1
        if before.delivery_reached_at is None and after.delivery_reached_at is not None:
            self.messages[(*key, "delivered")] += 1
        for status in (MessageStatus.READ, MessageStatus.REJECTED, MessageStatus.UNDELIVERABLE):
            if status in after.status_times and status not in before.status_times:
                self.messages[(*key, status.value)] += 1

    def decision_changed(
        self, api: str, old_status: str, old_step: int | None, old_by: str | None, new: Decision
    ) -> None:
        """Count a workflow's new outcome, and the steps it newly moved on from."""
        if old_status != "pending":
            return  # a decided workflow moves on no further
        if new.status.value != "pending":
            self.decided[(api, new.status.value)] += 1
        # Steps before this one had already handed over when it was last decided.
        settled_before = (old_step or 1) if old_by is not None else 1
        last = len(new.steps)
        for result in new.steps:
            if result.number >= settled_before and result.number < last:
                if result.outcome in FAILED_OVER:
                    self.failovers[(api, channel_name(result.step.channel))] += 1
