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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from app import times
from app.state import (
    FAILURE,
    Channel,
    DispatchStatus,
    MessageState,
    MessageStatus,
    Money,
    Report,
    ReportedStatus,
    computed_usage,
)

DecidedBy = Literal["definition", "final_report"]


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
    channel: Channel
    # None on the last step, which only has to be delivered.
    condition_status: MessageStatus | None = None
    expiry_time: int | None = None  # seconds

    @property
    def expiry(self) -> timedelta | None:
        return None if self.expiry_time is None else timedelta(seconds=self.expiry_time)


@dataclass(frozen=True)
class Definition:
    steps: tuple[Step, ...]


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


@dataclass(frozen=True)
class Decision:
    status: DispatchStatus
    decided_by: DecidedBy | None
    steps: tuple[StepResult, ...] = ()
    # While pending: the step waited for, and by when something must happen
    # (its deadline, or, if its message never appeared, when it was due).
    current_step: int | None = None
    due_at: datetime | None = None
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


def assign(
    definition: Definition, messages: Iterable[MessageState]
) -> tuple[dict[int, MessageState], list[MessageState]]:
    """Map messages to steps by channel and order of appearance.

    The n-th message seen on a channel (by event time) is the n-th step on
    that channel. Returns {step index: message} and the messages no step has.
    """
    ordered = sorted(
        messages,
        key=lambda m: (
            m.first_event_at is None,
            m.first_event_at or datetime.min,
            m.message_uuid,
        ),
    )
    free: dict[Channel, list[int]] = {}
    for index, step in enumerate(definition.steps):
        free.setdefault(step.channel, []).append(index)
    assigned: dict[int, MessageState] = {}
    unmatched: list[MessageState] = []
    for message in ordered:
        slots = free.get(message.channel) if message.channel else None
        if slots:
            assigned[slots.pop(0)] = message
        else:
            unmatched.append(message)
    return assigned, unmatched


def evaluate(
    definition: Definition | None, messages: Sequence[MessageState], report: Report | None
) -> tuple[Decision, list[Finding]]:
    """The workflow's status, and every way the final report disagrees with the callbacks.

    By the definition where there is one; else by the final report; else
    pending, decided by nobody (the service does not guess).
    """
    walked = _walk(definition, messages) if definition is not None else None
    findings = _reconcile(walked, definition, report, messages) if report is not None else []
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


def _walk(definition: Definition, messages: Sequence[MessageState]) -> Decision:
    assigned, _ = assign(definition, messages)
    results: list[StepResult] = []
    last = len(definition.steps) - 1
    moved_on_at: datetime | None = None  # when the previous step handed over

    def finish(status: DispatchStatus, at: datetime | None, winner: int | None) -> Decision:
        rest = [
            StepResult(i + 1, definition.steps[i], Outcome.NOT_REACHED)
            for i in range(len(results), len(definition.steps))
        ]
        return Decision(
            status, "definition", tuple(results + rest), decided_at=at, winning_step=winner
        )

    def wait(due: datetime | None) -> Decision:
        number = len(results)  # the pending step was appended last
        rest = [
            StepResult(i + 1, definition.steps[i], Outcome.NOT_REACHED)
            for i in range(number, len(definition.steps))
        ]
        return Decision(
            DispatchStatus.PENDING,
            "definition",
            tuple(results + rest),
            current_step=number,
            due_at=due,
        )

    for index, step in enumerate(definition.steps):
        number = index + 1
        message = assigned.get(index)
        if message is None:
            if any(i > index for i in assigned):
                # A later step was sent, so this one's message was lost to us.
                results.append(StepResult(number, step, Outcome.MISSING))
                continue
            results.append(StepResult(number, step, Outcome.PENDING))
            return wait(moved_on_at)

        start = submitted_at(message)
        failure = failed_at(message)
        if index == last:
            delivered = reached_at(message, MessageStatus.DELIVERED)
            delivered_known = delivered is not None or message.status in (
                MessageStatus.DELIVERED,
                MessageStatus.READ,
            )
            if delivered_known:
                results.append(
                    StepResult(
                        number,
                        step,
                        Outcome.SUCCEEDED,
                        message.message_uuid,
                        start,
                        settled_at=delivered,
                    )
                )
                return finish(DispatchStatus.COMPLETED, delivered, number)
            if failure is not None or message.status in FAILURE:
                results.append(
                    StepResult(
                        number,
                        step,
                        Outcome.FAILED,
                        message.message_uuid,
                        start,
                        settled_at=failure,
                    )
                )
                return finish(DispatchStatus.ERROR, failure, None)
            results.append(StepResult(number, step, Outcome.PENDING, message.message_uuid, start))
            return wait(None)

        assert step.condition_status is not None and step.expiry is not None
        deadline = times.plus(start, step.expiry) if start is not None else None
        # A deadline past the end of representable time is no deadline at all.
        unbounded = start is not None and deadline is None
        reached = reached_at(message, step.condition_status)
        # At the deadline exactly is still within the expiry time.
        if reached is not None and (unbounded or (deadline is not None and reached <= deadline)):
            results.append(
                StepResult(
                    number, step, Outcome.SUCCEEDED, message.message_uuid, start, deadline, reached
                )
            )
            return finish(DispatchStatus.COMPLETED, reached, number)

        later_sent = any(i > index for i in assigned)
        if failure is not None or message.status in FAILURE:
            settled = failure
            outcome = Outcome.FAILED
        elif reached is not None and deadline is not None:  # reached, but too late
            settled, outcome = deadline, Outcome.EXPIRED
        elif later_sent:
            settled, outcome = deadline, Outcome.EXPIRED
        else:
            results.append(
                StepResult(number, step, Outcome.PENDING, message.message_uuid, start, deadline)
            )
            return wait(deadline)
        results.append(
            StepResult(number, step, outcome, message.message_uuid, start, deadline, settled)
        )
        moved_on_at = settled
    raise AssertionError("a definition has at least one step")  # pragma: no cover


def _reconcile(
    walked: Decision | None,
    definition: Definition | None,
    report: Report,
    messages: Sequence[MessageState],
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
        for message in unmatched:
            findings.append(
                Finding(
                    "unexpected_message",
                    f"message {message.message_uuid} ({message.channel or 'unknown channel'}) "
                    "matches no step of the definition",
                )
            )
    findings.extend(_usage_findings(report, messages))
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


def _usage_findings(report: Report, messages: Sequence[MessageState]) -> list[Finding]:
    if report.usage is None:
        return []
    computed = computed_usage(messages)
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
        detail += "; " + "; ".join(causes)
    return [Finding("usage_mismatch", detail)]


def _priced(message: MessageState) -> str:
    assert message.usage is not None
    return f"message {message.message_uuid} ({message.channel}, {message.usage.describe()})"
