"""The workflow state machine: pure data and functions, no Flask, SQL or clock.

Dispatch delivers callbacks at least once and in any order, so every
transition here is a *join*: it merges what an event says into what is
already known, and the merge is commutative, associative and idempotent.
Whatever order the callbacks of a workflow arrive in, and however often each
arrives, the resulting state is the same. Where two callbacks contradict each
other, a deterministic rule picks the value that stands and the other one is
reported as a `Discrepancy`, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Rounded
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
S = TypeVar("S")


class MessageStatus(StrEnum):
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    READ = "read"
    REJECTED = "rejected"
    UNDELIVERABLE = "undeliverable"


class ReportedStatus(StrEnum):
    """The status a final report gives a whole workflow."""

    COMPLETED = "completed"
    ERROR = "error"


class DispatchStatus(StrEnum):
    """The status this service decides for a workflow."""

    PENDING = "pending"
    COMPLETED = "completed"
    ERROR = "error"


class Api(StrEnum):
    """Which Vonage API ran a workflow, and sent a callback."""

    DISPATCH = "dispatch"
    MESSAGES = "messages"  # Messages API failover, Dispatch's successor


class Channel(StrEnum):
    """Every channel either API names, each under its own API's name.

    Which API accepts which is the schemas' business (`DISPATCH_CHANNELS`,
    `MESSAGES_CHANNELS`): Viber is `viber_service_msg` to Dispatch and
    `viber_service` to the Messages API, and only the latter has RCS.
    """

    SMS = "sms"
    MMS = "mms"
    MESSENGER = "messenger"
    VIBER_SERVICE_MSG = "viber_service_msg"
    WHATSAPP = "whatsapp"
    RCS = "rcs"
    VIBER_SERVICE = "viber_service"


DISPATCH_CHANNELS = (
    Channel.SMS,
    Channel.MMS,
    Channel.MESSENGER,
    Channel.VIBER_SERVICE_MSG,
    Channel.WHATSAPP,
)
MESSAGES_CHANNELS = (
    Channel.SMS,
    Channel.MMS,
    Channel.RCS,
    Channel.WHATSAPP,
    Channel.MESSENGER,
    Channel.VIBER_SERVICE,
)


# What "current status" means when callbacks come out of order: the highest
# rank observed wins. `read` implies delivery, so it outranks `delivered`; a
# success outranks a failure, so a late failure cannot undo a delivery.
PRECEDENCE: Mapping[MessageStatus, int] = {
    MessageStatus.SUBMITTED: 0,
    MessageStatus.REJECTED: 1,
    MessageStatus.UNDELIVERABLE: 1,
    MessageStatus.DELIVERED: 2,
    MessageStatus.READ: 3,
}
SUCCESS = frozenset({MessageStatus.DELIVERED, MessageStatus.READ})

# A Messages API failover workflow has at most this many items: the message and
# up to nine failover messages. A status that claims a place beyond it is kept
# and its claim recorded as a discrepancy, but it never makes a step: one
# 300-byte callback claiming "items_total": "10000" made a workflow of 10,000
# steps. (Refusing it would make Vonage drop the callback for good.)
MAX_ITEMS = 10
FAILURE = frozenset({MessageStatus.REJECTED, MessageStatus.UNDELIVERABLE})


# Arithmetic on amounts never rounds: Python's default context keeps 28
# digits, and a price of up to 50 characters (a sum of them, more) needs more.
# Should a result ever need rounding anyway, it raises instead.
EXACT = Context(prec=1000, traps=[Inexact, Rounded, InvalidOperation])


def canonical_amount(amount: Decimal) -> Decimal:
    """The shortest exact spelling of an amount: no trailing zeros, no exponent."""
    normalized = amount.normalize(EXACT)
    exponent = normalized.as_tuple().exponent
    # normalize() writes 100 as 1E+2; quantizing restores plain digits.
    return (
        normalized.quantize(Decimal(1), context=EXACT)
        if isinstance(exponent, int) and exponent > 0
        else normalized
    )


class StateMismatch(ValueError):
    """An event was applied to the state of a different message or workflow."""


@dataclass(frozen=True, order=True)
class Money:
    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        # 0.03 and 0.030 are one price: keep one spelling of it, so that which
        # callback arrived first cannot show through (the raw copy keeps theirs).
        object.__setattr__(self, "amount", canonical_amount(self.amount))

    def describe(self) -> str:
        return f"{format(self.amount, 'f')} {self.currency}"


@dataclass(frozen=True, order=True)
class Party:
    """The `to` or `from` of a message; empty strings never occur (min length 1)."""

    type: str
    id: str | None = None
    number: str | None = None

    def sort_key(self) -> tuple[str, str, str]:
        return (self.type, self.id or "", self.number or "")

    def describe(self) -> str:
        """What a conflict says of this party: its type and which fields it has, never
        their values. A number or a Messenger id is a person's; no read document
        (the read API, the dashboard, the analysts' views) may show one."""
        has_id = "an id" if self.id else "no id"
        has_number = "a number" if self.number else "no number"
        return f"a party of type {self.type} with {has_id} and {has_number} (values not shown)"


@dataclass(frozen=True)
class ErrorInfo:
    code: int | None
    reason: str | None


@dataclass(frozen=True)
class StatusEvent:
    """One message-status callback, of either API."""

    message_uuid: str
    status: MessageStatus
    occurred_at: datetime
    dispatch_uuid: str | None = None  # the workflow: Dispatch's uuid, or Messages' workflow_id
    channel: Channel | None = None
    to: Party | None = None
    from_: Party | None = None
    error: ErrorInfo | None = None
    usage: Money | None = None
    api: Api = Api.DISPATCH
    # Messages API failover: the message's place in its workflow.
    item_number: int | None = None
    items_total: int | None = None
    client_ref: str | None = None


@dataclass(frozen=True)
class ReportedMessage:
    """One entry of a final report's `_links.messages`."""

    message_uuid: str
    channel: Channel | None = None
    status: MessageStatus | None = None
    usage: Money | None = None


@dataclass(frozen=True)
class Report:
    """What a final report says about its workflow as a whole."""

    occurred_at: datetime
    status: ReportedStatus
    usage: Money | None = None

    def sort_key(self) -> tuple[datetime, str, Decimal, str]:
        usage = self.usage or Money(Decimal(-1), "")
        return (self.occurred_at, self.status.value, usage.amount, usage.currency)

    def describe(self) -> str:
        usage = self.usage.describe() if self.usage else "no usage"
        return f"{self.status.value} at {self.occurred_at.isoformat()} ({usage})"


@dataclass(frozen=True)
class FinalReport:
    """One final-report callback."""

    dispatch_uuid: str
    status: ReportedStatus
    occurred_at: datetime
    template: str | None = None
    usage: Money | None = None
    messages: tuple[ReportedMessage, ...] = ()

    @property
    def report(self) -> Report:
        return Report(self.occurred_at, self.status, self.usage)


@dataclass(frozen=True, order=True)
class Discrepancy:
    """Two callbacks disagree; what stands is in the state, this is the rest."""

    subject: Literal["message", "dispatch"]
    subject_id: str
    kind: str
    detail: str


@dataclass(frozen=True)
class MessageState:
    message_uuid: str
    dispatch_uuid: str | None = None
    channel: Channel | None = None
    to: Party | None = None
    from_: Party | None = None
    # Earliest event time seen for each status (a repeated status keeps its
    # first occurrence, which is what "delivered at" means).
    status_times: Mapping[MessageStatus, datetime] = field(default_factory=dict)
    # Every status a final report gave this message (two reports may disagree);
    # they have no event time. A set, not the highest: a `rejected` reported
    # after a `read` is a contradiction whichever report came first.
    reported_statuses: frozenset[MessageStatus] = frozenset()
    usage: Money | None = None
    error: ErrorInfo | None = None
    error_at: datetime | None = None
    api: Api | None = None
    item_number: int | None = None
    items_total: int | None = None
    client_ref: str | None = None

    @property
    def reported_status(self) -> MessageStatus | None:
        """The status the final reports give this message: the highest by precedence."""
        return max(self.reported_statuses, key=_rank, default=None)

    @property
    def status(self) -> MessageStatus | None:
        return current_status(self.status_times, self.reported_status)

    @property
    def first_event_at(self) -> datetime | None:
        """The earliest event time of any status: when the message was first seen."""
        return min(self.status_times.values(), default=None)

    @property
    def delivery_reached_at(self) -> datetime | None:
        """When it reached delivery: `read` implies delivered, so the earlier of the two."""
        reached = [self.status_times[s] for s in SUCCESS if s in self.status_times]
        return min(reached, default=None)

    @property
    def contradictions(self) -> frozenset[MessageStatus]:
        """Failure statuses recorded beside a success (the success stands)."""
        seen = set(self.status_times) | self.reported_statuses
        return frozenset(seen & FAILURE) if seen & SUCCESS else frozenset()


@dataclass(frozen=True)
class DispatchState:
    dispatch_uuid: str
    template: str | None = None
    report: Report | None = None
    api: Api | None = None


@dataclass(frozen=True)
class Transition(Generic[S]):
    """The new state and what else the transition has to say."""

    state: S
    discrepancies: tuple[Discrepancy, ...] = ()


def _rank(status: MessageStatus) -> tuple[int, str]:
    """Precedence, then the name: a total order, so that a pick never depends on arrival."""
    return (PRECEDENCE[status], status.value)


def current_status(
    status_times: Mapping[MessageStatus, datetime], reported: MessageStatus | None
) -> MessageStatus | None:
    """Pick the current status by precedence; equal ranks go to the later event."""
    candidates: list[tuple[int, datetime | None, str]] = [
        (PRECEDENCE[status], at, status.value) for status, at in status_times.items()
    ]
    if reported is not None and reported not in status_times:
        candidates.append((PRECEDENCE[reported], None, reported.value))
    if not candidates:
        return None
    # A reported status has no event time, so it ranks below any timed one of
    # the same precedence; the name breaks an exact tie so the pick is total.
    best = max(candidates, key=lambda c: (c[0], c[1] is not None, c[1] or datetime.min, c[2]))
    return MessageStatus(best[2])


class _Joiner:
    """Merges scalar facts and collects the losers of each conflict."""

    def __init__(self, subject: Literal["message", "dispatch"], subject_id: str) -> None:
        self.subject = subject
        self.subject_id = subject_id
        self.found: list[Discrepancy] = []

    def join(
        self,
        kind: str,
        current: T | None,
        incoming: T | None,
        key: Callable[[T], Any],
        describe: Callable[[T], str],
        keep: Literal["min", "max"] = "min",
    ) -> T | None:
        """Keep one value deterministically; record the other if they differ.

        Every observed value but the final winner loses exactly once, whatever
        the order, so the recorded set is order-independent too.
        """
        if incoming is None or incoming == current:
            return current
        if current is None:
            return incoming
        pick = min if keep == "min" else max
        winner = pick(current, incoming, key=key)
        loser = incoming if winner is current else current
        self.found.append(
            Discrepancy(self.subject, self.subject_id, kind, f"also reported: {describe(loser)}")
        )
        return winner


def _str_key(value: str) -> str:
    return value


def _same(value: str) -> str:
    return value


def _int_key(value: int) -> int:
    return value


def _money_key(value: Money) -> tuple[Decimal, str]:
    return (value.amount, value.currency)


def _party_key(value: Party) -> tuple[str, str, str]:
    return value.sort_key()


def _error_key(at: datetime, error: ErrorInfo) -> tuple[datetime, bool, int, bool, str]:
    # A total order: absent and empty must differ, or the first arrival would win a tie.
    return (
        at,
        error.code is not None,
        error.code or 0,
        error.reason is not None,
        error.reason or "",
    )


def _contradictions(state: MessageState) -> tuple[Discrepancy, ...]:
    return tuple(
        Discrepancy(
            "message",
            state.message_uuid,
            "status_contradiction",
            f"'{failure.value}' reported for a message that also reached a success status",
        )
        for failure in sorted(state.contradictions)
    )


def _check_subject(kind: str, expected: str, got: str) -> None:
    if expected != got:
        raise StateMismatch(f"{kind} event for {got!r} applied to the state of {expected!r}")


def apply_status(state: MessageState | None, event: StatusEvent) -> Transition[MessageState]:
    """Merge one message-status callback into a message's state."""
    state = state or MessageState(event.message_uuid)
    _check_subject("status", state.message_uuid, event.message_uuid)
    joiner = _Joiner("message", state.message_uuid)

    times = dict(state.status_times)
    seen_at = times.get(event.status)
    times[event.status] = event.occurred_at if seen_at is None else min(seen_at, event.occurred_at)

    # The error that stands is that of the latest event carrying one.
    error, error_at = state.error, state.error_at
    if event.error is not None and (
        error is None
        or error_at is None
        or _error_key(event.occurred_at, event.error) > _error_key(error_at, error)
    ):
        error, error_at = event.error, event.occurred_at

    new = replace(
        state,
        dispatch_uuid=joiner.join(
            "dispatch_conflict", state.dispatch_uuid, event.dispatch_uuid, _str_key, _same
        ),
        channel=joiner.join("channel_conflict", state.channel, event.channel, _str_key, _same),
        to=joiner.join("to_conflict", state.to, event.to, _party_key, Party.describe),
        from_=joiner.join("from_conflict", state.from_, event.from_, _party_key, Party.describe),
        status_times=times,
        usage=joiner.join(
            "price_conflict", state.usage, event.usage, _money_key, Money.describe, keep="max"
        ),
        error=error,
        error_at=error_at,
        api=joiner.join("api_conflict", state.api, event.api, _str_key, _same, keep="max"),
        item_number=joiner.join(
            "item_number_conflict", state.item_number, event.item_number, _int_key, str
        ),
        items_total=joiner.join(
            "items_total_conflict", state.items_total, event.items_total, _int_key, str
        ),
        client_ref=joiner.join(
            "client_ref_conflict", state.client_ref, event.client_ref, _str_key, _same
        ),
    )
    return Transition(new, tuple(joiner.found) + _contradictions(new) + _beyond_items(event))


def _beyond_items(event: StatusEvent) -> tuple[Discrepancy, ...]:
    """A claimed place past MAX_ITEMS: recorded, never a step (failover.items_definition)."""
    claims = [n for n in (event.item_number, event.items_total) if n is not None]
    if not claims or max(claims) <= MAX_ITEMS:
        return ()
    detail = (
        f"claims item {event.item_number or '?'} of {event.items_total or '?'}; a Messages API"
        f" failover workflow has at most {MAX_ITEMS} items, so this claim makes no step"
    )
    return (Discrepancy("message", event.message_uuid, "items_beyond_limit", detail),)


def apply_reported_message(
    state: MessageState | None, dispatch_uuid: str, reported: ReportedMessage
) -> Transition[MessageState]:
    """Merge what a final report says about one of its messages."""
    state = state or MessageState(reported.message_uuid)
    _check_subject("reported message", state.message_uuid, reported.message_uuid)
    joiner = _Joiner("message", state.message_uuid)

    reported_statuses = state.reported_statuses
    if reported.status is not None:
        reported_statuses = reported_statuses | {reported.status}
    new = replace(
        state,
        dispatch_uuid=joiner.join(
            "dispatch_conflict", state.dispatch_uuid, dispatch_uuid, _str_key, _same
        ),
        channel=joiner.join("channel_conflict", state.channel, reported.channel, _str_key, _same),
        api=joiner.join("api_conflict", state.api, Api.DISPATCH, _str_key, _same, keep="max"),
        reported_statuses=reported_statuses,
        usage=joiner.join(
            "price_conflict", state.usage, reported.usage, _money_key, Money.describe, keep="max"
        ),
    )
    return Transition(new, tuple(joiner.found) + _contradictions(new))


def apply_final_report(
    state: DispatchState | None, report: FinalReport
) -> Transition[DispatchState]:
    """Merge a final-report callback into its workflow's state.

    Dispatch sends one final report per workflow. Should two different ones
    arrive, the later (by event time) stands and the other is a discrepancy.
    """
    state = state or DispatchState(report.dispatch_uuid)
    _check_subject("final report", state.dispatch_uuid, report.dispatch_uuid)
    joiner = _Joiner("dispatch", state.dispatch_uuid)
    new = replace(
        state,
        api=joiner.join("api_conflict", state.api, Api.DISPATCH, _str_key, _same, keep="max"),
        template=joiner.join("template_conflict", state.template, report.template, _str_key, _same),
        report=joiner.join(
            "final_report_conflict",
            state.report,
            report.report,
            Report.sort_key,
            Report.describe,
            keep="max",
        ),
    )
    return Transition(new, tuple(joiner.found))


def apply_link(
    state: DispatchState | None, dispatch_uuid: str, api: Api
) -> Transition[DispatchState]:
    """Merge what a message's callback or a definition says about its workflow: its API."""
    state = state or DispatchState(dispatch_uuid)
    _check_subject("link", state.dispatch_uuid, dispatch_uuid)
    joiner = _Joiner("dispatch", state.dispatch_uuid)
    new = replace(
        state, api=joiner.join("api_conflict", state.api, api, _str_key, _same, keep="max")
    )
    return Transition(new, tuple(joiner.found))


def computed_usage(messages: Iterable[MessageState]) -> dict[str, Decimal]:
    """Sum one price per message, per currency, exactly (Decimal, never float)."""
    totals: dict[str, Decimal] = {}
    for message in messages:
        if message.usage is not None:
            currency = message.usage.currency
            totals[currency] = EXACT.add(totals.get(currency, Decimal(0)), message.usage.amount)
    return totals
