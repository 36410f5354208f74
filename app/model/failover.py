"""Decide a workflow's outcome from its definition and its messages: pure, no clock.

Dispatch's failover template sends step 1; if that message fails at once, or
does not reach its `condition_status` within `expiry_time` of being
submitted, it sends step 2, and so on. The last step has no condition: it
succeeds when delivered and fails the workflow when it fails. Everything here
depends only on event times (the callbacks' timestamps), so the decision is
the same whatever order the callbacks arrived in; comparing deadlines with
the present is left to the caller, who passes the time in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from app.model import times
from app.model.state import (
    FAILURE,
    MAX_ITEMS,
    Api,
    Channel,
    DispatchStatus,
    MessageState,
    MessageStatus,
    Money,
    Report,
    ReportedStatus,
    computed_usage,
)

DecidedBy = Literal["definition", "final_report", "callbacks"]

# A workflow has at most this many steps: Dispatch's definitions
# (definitions.MAX_STEPS) and the Messages API's items (state.MAX_ITEMS) alike.
# So of a workflow's messages only a few can hold a step: the first of each
# item number, and the first this many of each channel (`assign`). Those are
# all a decision reads (storage.workflows_messages), whatever else the
# workflow holds: deciding costs the same for 3 messages and for 10,000.
MOST_STEPS = MAX_ITEMS
# Messages a finding lists by name; the rest are counted.
LISTED = 10


@dataclass(frozen=True)
class Totals:
    """What a decision needs to know of all of a workflow's messages, not only those it reads."""

    messages: int  # how many the workflow holds
    usage: Mapping[str, Decimal]  # every message's price summed, per currency, exactly
    items: int  # the most items any of them claims, up to MAX_ITEMS (0: none)

    @classmethod
    def of(cls, messages: Sequence[MessageState]) -> Totals:
        """When the messages given are all there are."""
        claims = [
            n
            for m in messages
            for n in (m.items_total, m.item_number)
            if n is not None and n <= MAX_ITEMS
        ]
        return cls(len(messages), computed_usage(messages), max(claims, default=0))


class Outcome(StrEnum):
    """What became of one step."""

    SUCCEEDED = "succeeded"  # reached its condition in time (last step: delivered)
    FAILED = "failed"  # its message failed: Dispatch moves on at once
    EXPIRED = "expired"  # condition reached late, or a later step shows it moved on
    PENDING = "pending"  # waiting for its condition or its deadline
    MISSING = "missing"  # a later step has a message, this one never showed up
    NOT_REACHED = "not_reached"  # the workflow ended or has not got this far


@dataclass(frozen=True)
class Step:
    # None only for a Messages API item never seen, in a workflow without a definition.
    channel: Channel | None
    # None on the last step, which only has to be delivered, and on every
    # Messages API item (it fails over when rejected, never on a timer).
    condition_status: MessageStatus | None = None
    expiry_time: int | None = None  # seconds

    @property
    def expiry(self) -> timedelta | None:
        return None if self.expiry_time is None else timedelta(seconds=self.expiry_time)


@dataclass(frozen=True)
class Definition:
    steps: tuple[Step, ...]
    api: Api = Api.DISPATCH


@dataclass(frozen=True)
class StepResult:
    number: int  # 1-based, as a person counts steps
    step: Step
    outcome: Outcome
    message_uuid: str | None = None
    submitted_at: datetime | None = None
    # submitted_at + expiry_time: by when the condition must be reached.
    deadline: datetime | None = None
    # When the outcome became known (the deciding event's time).
    settled_at: datetime | None = None
    # The rule that gave the outcome, in words (None for a step with no message).
    why: str | None = None


@dataclass(frozen=True)
class Decision:
    status: DispatchStatus
    decided_by: DecidedBy | None
    steps: tuple[StepResult, ...] = ()
    # While pending: the step waited for, and by when something must happen
    # (its deadline, or, if its message never appeared, when it was due).
    current_step: int | None = None
    due_at: datetime | None = None
    # While pending on a step with no deadline (a last step; any Messages
    # item): since when. How long is too long is the reader's setting.
    awaiting_since: datetime | None = None
    # When the terminal outcome happened (event time), for final-report overdue.
    decided_at: datetime | None = None
    winning_step: int | None = None


@dataclass(frozen=True)
class Finding:
    """A disagreement between the final report and what the callbacks show."""

    kind: str
    detail: str


def submitted_at(message: MessageState) -> datetime | None:
    """The submission time, or the earliest event when `submitted` was not received."""
    return message.status_times.get(MessageStatus.SUBMITTED) or message.first_event_at


def reached_at(message: MessageState, condition: MessageStatus) -> datetime | None:
    """When the message reached a condition status (None if only a final report says so)."""
    if condition is MessageStatus.READ:
        return message.status_times.get(MessageStatus.READ)
    return message.delivery_reached_at


def failed_at(message: MessageState) -> datetime | None:
    found = [t for s, t in message.status_times.items() if s in FAILURE]
    return min(found) if found else None


def sent_order(message: MessageState) -> tuple[bool, datetime, str]:
    """The order messages were sent in: by their first event, then id (never seen: last).

    storage.workflows_messages orders its rows the same way, in SQL.
    """
    return (
        message.first_event_at is None,
        message.first_event_at or datetime.min,
        message.message_uuid,
    )


def assign(
    definition: Definition, messages: Iterable[MessageState]
) -> tuple[dict[int, MessageState], list[MessageState]]:
    """Map messages to steps. Returns {step index: message} and the messages no step has.

    A Messages API item says which it is (`item_number`). Otherwise the n-th
    message seen on a channel (by event time) is the n-th step on that channel.
    """
    ordered = sorted(messages, key=sent_order)
    assigned: dict[int, MessageState] = {}
    unmatched: list[MessageState] = []
    rest: list[MessageState] = []
    for message in ordered:
        number = message.item_number
        if number is None:
            rest.append(message)
        elif 1 <= number <= len(definition.steps) and number - 1 not in assigned:
            assigned[number - 1] = message
        else:
            unmatched.append(message)
    free: dict[Channel | None, list[int]] = {}
    for index, step in enumerate(definition.steps):
        if index not in assigned:
            free.setdefault(step.channel, []).append(index)
    for message in rest:
        slots = free.get(message.channel) if message.channel else None
        if slots:
            assigned[slots.pop(0)] = message
        else:
            unmatched.append(message)
    return assigned, unmatched


def items_definition(messages: Sequence[MessageState], claimed: int = 0) -> Definition | None:
    """A Messages API failover workflow's steps as its items show them, without a definition.

    As many steps as the items say there are (`items_total`, or the highest
    item seen; `claimed`, the most any message of the workflow claims), each
    on its item's channel where that item has been seen. A claim past
    MAX_ITEMS makes no step (state.MAX_ITEMS; it is a discrepancy).
    """
    numbered = [m for m in messages if m.item_number is not None and m.item_number <= MAX_ITEMS]
    totals = [m.items_total for m in messages if m.items_total is not None]
    count = max(
        [*(t for t in totals if t <= MAX_ITEMS), *(m.item_number or 0 for m in numbered), claimed],
        default=0,
    )
    if count == 0:
        return None
    channels: dict[int, Channel | None] = {}
    # Each item's channel is that of its first message: the one `assign` gives its step.
    for m in sorted(numbered, key=sent_order):
        channels.setdefault(m.item_number or 0, m.channel)
    return Definition(tuple(Step(channels.get(n)) for n in range(1, count + 1)), Api.MESSAGES)


@dataclass(frozen=True)
class Seen:
    """What is known of the message of one step: what the rules below read."""

    message: MessageState
    last: bool  # the workflow's last step
    later_sent: bool  # a later step has a message
    start: datetime | None  # submitted (or first seen)
    deadline: datetime | None  # start + expiry_time (None: none, or past year 9999)
    unbounded: bool  # an expiry so long that its deadline is past representable time
    reached: datetime | None  # when it reached its condition (last step: delivery)
    failure: datetime | None  # when it was rejected or undeliverable

    @property
    def delivered(self) -> bool:
        """Delivery is known: by a callback's time, or by the current status alone."""
        return self.message.delivery_reached_at is not None or self.message.status in (
            MessageStatus.DELIVERED,
            MessageStatus.READ,
        )

    @property
    def failed(self) -> bool:
        return self.failure is not None or self.message.status in FAILURE

    @property
    def reached_in_time(self) -> bool:
        # At the deadline exactly is still within the expiry time.
        return self.reached is not None and (
            self.unbounded or (self.deadline is not None and self.reached <= self.deadline)
        )

    @property
    def reached_late(self) -> bool:
        return self.reached is not None and self.deadline is not None


def _always(_: Seen) -> bool:
    return True


def _no_time(_: Seen) -> None:
    return None


@dataclass(frozen=True)
class Rule:
    """If `applies`, the step's outcome is `outcome`, known at `settled` (an event time)."""

    says: str
    applies: Callable[[Seen], bool]
    outcome: Outcome
    settled: Callable[[Seen], datetime | None] = _no_time


# The rules of both APIs, side by side. Each step's message is judged by the
# first rule of its list that applies. Then the workflow: a step that
# SUCCEEDED completes it; FAILED or EXPIRED on the last step ends it in error;
# elsewhere they hand over to the next step (at `settled`); PENDING waits.
# A step with no message is MISSING when a later step has one, else awaited.
# The rules both APIs share.
DELIVERED = Rule(
    "delivered (read implies delivered)",
    lambda s: s.delivered,
    Outcome.SUCCEEDED,
    lambda s: s.reached,
)
ENDED_IN_FAILURE = Rule(
    "rejected or undeliverable", lambda s: s.failed, Outcome.FAILED, lambda s: s.failure
)
AWAITED = Rule("otherwise it waits for an outcome, with no deadline", _always, Outcome.PENDING)

DISPATCH_STEP = (
    Rule(
        "reached its condition_status by the deadline",
        lambda s: s.reached_in_time,
        Outcome.SUCCEEDED,
        lambda s: s.reached,
    ),
    Rule(
        "rejected or undeliverable: Dispatch moves on at once",
        lambda s: s.failed,
        Outcome.FAILED,
        lambda s: s.failure,
    ),
    Rule(
        "reached its condition after the deadline",
        lambda s: s.reached_late,
        Outcome.EXPIRED,
        lambda s: s.deadline,
    ),
    Rule("a later step was sent", lambda s: s.later_sent, Outcome.EXPIRED, lambda s: s.deadline),
    Rule("otherwise it waits until its deadline", _always, Outcome.PENDING),
)
MESSAGES_ITEM = (
    DELIVERED,
    Rule(
        "rejected (or undeliverable): the next item goes out",
        lambda s: s.failed,
        Outcome.FAILED,
        lambda s: s.failure,
    ),
    Rule("a later item was sent", lambda s: s.later_sent, Outcome.EXPIRED),
    AWAITED,
)
# Either API's last step only has to be delivered.
LAST_STEP = (DELIVERED, ENDED_IN_FAILURE, AWAITED)
RULES: dict[tuple[Api, bool], tuple[Rule, ...]] = {
    # (api, last step?) -> rules
    (Api.DISPATCH, False): DISPATCH_STEP,
    (Api.DISPATCH, True): LAST_STEP,
    (Api.MESSAGES, False): MESSAGES_ITEM,
    (Api.MESSAGES, True): LAST_STEP,
}


def judge(rules: Sequence[Rule], seen: Seen) -> Rule:
    """The first rule that applies to one step's message: it gives the outcome."""
    return next(r for r in rules if r.applies(seen))


def evaluate(
    definition: Definition | None,
    messages: Sequence[MessageState],
    report: Report | None,
    api: Api | None = Api.DISPATCH,
    totals: Totals | None = None,
) -> tuple[Decision, list[Finding]]:
    """The workflow's status, and every way the final report disagrees with the callbacks.

    By the definition where there is one; a Messages API workflow without
    one, by its items (each says its place); else by the final report; else
    pending, decided by nobody (the service does not guess).

    `messages` holds at least every message that can hold a step (see
    MOST_STEPS); `totals` says what all of them add up to, when there are more.
    """
    totals = totals or Totals.of(messages)
    if definition is None and api is Api.MESSAGES:
        by_items = items_definition(messages, totals.items)
        if by_items is not None:
            return _walk(by_items, messages, "callbacks"), []
    walked = _walk(definition, messages, "definition") if definition is not None else None
    findings = (
        _reconcile(walked, definition, report, messages, totals) if report is not None else []
    )
    if walked is None:
        if report is None:
            return Decision(DispatchStatus.PENDING, None), findings
        decision = Decision(_mirror(report.status), "final_report", decided_at=report.occurred_at)
        return decision, findings
    if walked.status is DispatchStatus.PENDING and report is not None:
        # The callbacks received do not settle it, but Dispatch has spoken:
        # follow the report; the findings say what is missing.
        decision = Decision(
            _mirror(report.status),
            "final_report",
            steps=walked.steps,
            decided_at=report.occurred_at,
        )
        return decision, findings
    return walked, findings


def _mirror(status: ReportedStatus) -> DispatchStatus:
    return DispatchStatus(status.value)


def _seen(definition: Definition, index: int, message: MessageState, later_sent: bool) -> Seen:
    step = definition.steps[index]
    last = index == len(definition.steps) - 1
    start = submitted_at(message)
    timed = not last and step.condition_status is not None and step.expiry is not None
    deadline = None
    if timed and start is not None:
        assert step.expiry is not None
        deadline = times.plus(start, step.expiry)
    condition = step.condition_status if timed and step.condition_status else None
    return Seen(
        message=message,
        last=last,
        later_sent=later_sent,
        start=start,
        deadline=deadline,
        # A deadline past the end of representable time is no deadline at all.
        unbounded=timed and start is not None and deadline is None,
        reached=reached_at(message, condition or MessageStatus.DELIVERED),
        failure=failed_at(message),
    )


def _walk(definition: Definition, messages: Sequence[MessageState], by: DecidedBy) -> Decision:
    assigned, _ = assign(definition, messages)
    results: list[StepResult] = []
    moved_on_at: datetime | None = None  # when the previous step handed over

    def rest() -> list[StepResult]:
        return [
            StepResult(i + 1, definition.steps[i], Outcome.NOT_REACHED)
            for i in range(len(results), len(definition.steps))
        ]

    def finish(status: DispatchStatus, at: datetime | None, winner: int | None) -> Decision:
        return Decision(status, by, tuple(results + rest()), decided_at=at, winning_step=winner)

    def wait(due: datetime | None, since: datetime | None = None) -> Decision:
        number = len(results)  # the pending step was appended last
        return Decision(
            DispatchStatus.PENDING,
            by,
            tuple(results + rest()),
            current_step=number,
            due_at=due,
            awaiting_since=since,
        )

    for index, step in enumerate(definition.steps):
        number = index + 1
        message = assigned.get(index)
        later_sent = any(i > index for i in assigned)
        if message is None:
            if later_sent:
                # A later step was sent, so this one's message was lost to us.
                results.append(StepResult(number, step, Outcome.MISSING))
                continue
            results.append(StepResult(number, step, Outcome.PENDING))
            return wait(moved_on_at)

        seen = _seen(definition, index, message, later_sent)
        rule = judge(RULES[definition.api, seen.last], seen)
        outcome, settled = rule.outcome, rule.settled(seen)
        results.append(
            StepResult(
                number,
                step,
                outcome,
                message.message_uuid,
                seen.start,
                seen.deadline,
                settled,
                rule.says,
            )
        )
        if outcome is Outcome.SUCCEEDED:
            return finish(DispatchStatus.COMPLETED, settled, number)
        if outcome is Outcome.PENDING:
            # A step with a deadline is due then; one without is only awaited.
            if seen.deadline is not None or seen.unbounded:
                return wait(seen.deadline)
            return wait(None, seen.start)
        if seen.last:
            return finish(DispatchStatus.ERROR, settled, None)
        moved_on_at = settled
    raise AssertionError("a definition has at least one step")  # pragma: no cover


def _reconcile(
    walked: Decision | None,
    definition: Definition | None,
    report: Report,
    messages: Sequence[MessageState],
    totals: Totals,
) -> list[Finding]:
    findings: list[Finding] = []
    if walked is not None and definition is not None:
        if walked.status is DispatchStatus.PENDING:
            findings.append(
                Finding(
                    "undecided_at_final_report",
                    f"final report says {report.status.value}, but the callbacks received do "
                    f"not settle the workflow: step {walked.current_step} has no outcome yet",
                )
            )
        elif walked.status.value != report.status.value:
            findings.append(
                Finding(
                    "status_mismatch",
                    f"final report says {report.status.value}; by the definition the workflow "
                    f"is {walked.status.value} ({_why(walked)})",
                )
            )
        _, unmatched = assign(definition, messages)
        for message in unmatched[:LISTED]:
            findings.append(
                Finding(
                    "unexpected_message",
                    f"message {message.message_uuid} ({message.channel or 'unknown channel'}) "
                    "matches no step of the definition",
                )
            )
        # Those not read could hold no step either.
        more = len(unmatched[LISTED:]) + totals.messages - len(messages)
        if more:
            findings.append(
                Finding(
                    "unexpected_message", f"{more} more messages match no step of the definition"
                )
            )
    findings.extend(_usage_findings(report, messages, totals))
    return findings


def _why(decision: Decision) -> str:
    if decision.winning_step is not None:
        step = decision.steps[decision.winning_step - 1]
        condition = step.step.condition_status or MessageStatus.DELIVERED
        return f"step {step.number} ({step.step.channel}) reached {condition} in time"
    failed = [s for s in decision.steps if s.outcome is Outcome.FAILED]
    if failed:
        step = failed[-1]
        return f"the last step ({step.step.channel}) failed"
    return "no step succeeded"  # pragma: no cover - a terminal walk has a reason


def _usage_findings(
    report: Report, messages: Sequence[MessageState], totals: Totals
) -> list[Finding]:
    if report.usage is None:
        return []
    computed = totals.usage
    # Nothing charged and a total of 0 are the same cost.
    reported = {report.usage.currency: report.usage.amount}
    if {c: a for c, a in computed.items() if a} == {c: a for c, a in reported.items() if a}:
        return []
    causes: list[str] = []
    for message in sorted(messages, key=lambda m: m.message_uuid):
        if message.usage is None:
            continue
        late = [t for t in message.status_times.values() if t > report.occurred_at]
        if message.reported_status is None:
            causes.append(f"{_priced(message)} is not listed in the final report")
        elif late:
            causes.append(
                f"{_priced(message)} has events after the final report ({max(late).isoformat()})"
            )
    computed_text = (
        ", ".join(
            Money(amount, currency).describe() for currency, amount in sorted(computed.items())
        )
        or "nothing"
    )
    detail = f"final report total {report.usage.describe()}; computed {computed_text}"
    if causes:
        detail += "; " + "; ".join(causes[:LISTED])
    if causes[LISTED:]:
        detail += f"; and {len(causes[LISTED:])} more such messages"
    if unread := totals.messages - len(messages):
        detail += f"; {unread} more messages of the workflow not examined"
    return [Finding("usage_mismatch", detail)]


def _priced(message: MessageState) -> str:
    assert message.usage is not None
    return f"message {message.message_uuid} ({message.channel}, {message.usage.describe()})"
