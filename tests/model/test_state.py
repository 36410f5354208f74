"""The state machine as pure code: tables of events in, states and discrepancies out."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.model.state import (
    PRECEDENCE,
    Api,
    Channel,
    Discrepancy,
    DispatchState,
    ErrorInfo,
    FinalReport,
    MessageState,
    MessageStatus,
    Money,
    Report,
    ReportedMessage,
    ReportedStatus,
    StateMismatch,
    StatusEvent,
    apply_final_report,
    apply_reported_message,
    apply_status,
    computed_usage,
    current_status,
)
from app.spec.intake import CallbackKind, read
from tests import payloads

T0 = datetime(2020, 1, 1, 14, 0, tzinfo=UTC)
S = MessageStatus


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ev(status: MessageStatus, seconds: int = 0, **kw: Any) -> StatusEvent:
    return StatusEvent(message_uuid="m", status=status, occurred_at=at(seconds), **kw)


def run(events: list[StatusEvent]) -> tuple[MessageState, set[Discrepancy]]:
    state: MessageState | None = None
    found: set[Discrepancy] = set()
    for event in events:
        transition = apply_status(state, event)
        state, found = transition.state, found | set(transition.discrepancies)
    assert state is not None
    return state, found


# (events as (status, event second), expected current status)
PRECEDENCE_CASES = [
    ([(S.SUBMITTED, 0)], S.SUBMITTED),
    ([(S.SUBMITTED, 0), (S.DELIVERED, 5)], S.DELIVERED),
    ([(S.DELIVERED, 5), (S.SUBMITTED, 0)], S.DELIVERED),
    ([(S.READ, 9), (S.DELIVERED, 5)], S.READ),
    ([(S.READ, 9)], S.READ),  # read implies delivered
    ([(S.SUBMITTED, 0), (S.REJECTED, 1)], S.REJECTED),
    ([(S.UNDELIVERABLE, 3), (S.SUBMITTED, 0)], S.UNDELIVERABLE),
    ([(S.DELIVERED, 5), (S.REJECTED, 7)], S.DELIVERED),  # a failure after a success
    ([(S.REJECTED, 1), (S.DELIVERED, 5)], S.DELIVERED),
    ([(S.READ, 9), (S.UNDELIVERABLE, 10)], S.READ),
    # Equal rank: the later failure stands, whatever the arrival order.
    ([(S.REJECTED, 1), (S.UNDELIVERABLE, 2)], S.UNDELIVERABLE),
    ([(S.UNDELIVERABLE, 2), (S.REJECTED, 1)], S.UNDELIVERABLE),
    ([(S.UNDELIVERABLE, 1), (S.REJECTED, 2)], S.REJECTED),
    # Exact tie on time: broken by name, so still independent of order.
    ([(S.UNDELIVERABLE, 1), (S.REJECTED, 1)], S.UNDELIVERABLE),
    ([(S.REJECTED, 1), (S.UNDELIVERABLE, 1)], S.UNDELIVERABLE),
]


@pytest.mark.parametrize(("events", "expected"), PRECEDENCE_CASES)
def test_current_status_follows_precedence(
    events: list[tuple[MessageStatus, int]], expected: MessageStatus
) -> None:
    state, _ = run([ev(status, second) for status, second in events])
    assert state.status is expected


def test_precedence_table_ranks_success_over_failure_over_submission() -> None:
    assert PRECEDENCE[S.READ] > PRECEDENCE[S.DELIVERED] > PRECEDENCE[S.REJECTED]
    assert PRECEDENCE[S.REJECTED] == PRECEDENCE[S.UNDELIVERABLE] > PRECEDENCE[S.SUBMITTED]
    assert set(PRECEDENCE) == set(MessageStatus)


def test_repeated_status_keeps_its_first_event_time() -> None:
    state, _ = run([ev(S.DELIVERED, 9), ev(S.DELIVERED, 5), ev(S.DELIVERED, 7)])
    assert state.status_times == {S.DELIVERED: at(5)}


def test_failure_after_success_is_recorded_not_dropped() -> None:
    state, found = run([ev(S.DELIVERED, 5), ev(S.REJECTED, 7, error=ErrorInfo(1300, "x"))])
    assert state.status is S.DELIVERED
    assert state.status_times[S.REJECTED] == at(7)
    assert state.error == ErrorInfo(1300, "x")
    assert [d.kind for d in found] == ["status_contradiction"]
    assert "'rejected'" in next(iter(found)).detail


def test_latest_error_stands_whatever_the_order() -> None:
    early = ev(S.REJECTED, 1, error=ErrorInfo(1, "first"))
    late = ev(S.UNDELIVERABLE, 4, error=ErrorInfo(2, "second"))
    assert run([early, late])[0].error == ErrorInfo(2, "second")
    assert run([late, early])[0].error == ErrorInfo(2, "second")


def test_errors_at_the_same_moment_resolve_the_same_in_any_order() -> None:
    # Found by the property test below: absent and empty reasons must not tie.
    a = ev(S.REJECTED, 1, error=ErrorInfo(None, None))
    b = ev(S.REJECTED, 1, error=ErrorInfo(None, ""))
    assert run([a, b])[0].error == run([b, a])[0].error == ErrorInfo(None, "")


def test_price_repeated_in_several_callbacks_counts_once() -> None:
    price = Money(Decimal("0.0333"), "EUR")
    state, found = run([ev(S.SUBMITTED, 0, usage=price), ev(S.DELIVERED, 5, usage=price)])
    assert computed_usage([state]) == {"EUR": Decimal("0.0333")}
    assert found == set()


def test_conflicting_prices_keep_the_highest_and_record_the_other() -> None:
    low, high = Money(Decimal("0.03"), "EUR"), Money(Decimal("0.0333"), "EUR")
    for order in ([low, high], [high, low]):
        state, found = run([ev(S.SUBMITTED, i, usage=u) for i, u in enumerate(order)])
        assert state.usage == high
        assert {(d.kind, d.detail) for d in found} == {
            ("price_conflict", "also reported: 0.03 EUR")
        }


def test_dispatch_conflict_keeps_one_and_records_every_other_once() -> None:
    orders = itertools.permutations(["d-b", "d-a", "d-c"])
    outcomes = set()
    for order in orders:
        state, found = run([ev(S.SUBMITTED, 0, dispatch_uuid=d) for d in order])
        outcomes.add((state.dispatch_uuid, frozenset(found)))
    assert len(outcomes) == 1
    kept, found = outcomes.pop()
    assert kept == "d-a"
    assert {d.detail for d in found} == {"also reported: d-b", "also reported: d-c"}


def test_event_for_another_message_is_refused() -> None:
    with pytest.raises(StateMismatch):
        apply_status(MessageState("m"), StatusEvent("other", S.SUBMITTED, at(0)))
    with pytest.raises(StateMismatch):
        apply_final_report(
            DispatchState("d"), FinalReport("other", ReportedStatus.COMPLETED, at(0))
        )


def test_reported_status_counts_by_precedence_but_has_no_event_time() -> None:
    state = apply_reported_message(None, "d", ReportedMessage("m", Channel.SMS, S.DELIVERED)).state
    assert state.status is S.DELIVERED
    assert state.status_times == {}
    # A timed status of the same rank outranks the untimed report.
    assert current_status({S.REJECTED: at(1)}, S.UNDELIVERABLE) is S.REJECTED


def test_the_final_report_is_kept_on_the_workflow() -> None:
    state = DispatchState("d")
    assert state.report is None
    done = apply_final_report(state, FinalReport("d", ReportedStatus.ERROR, at(9))).state
    assert done.report == Report(at(9), ReportedStatus.ERROR)


def test_two_different_final_reports_resolve_to_the_later_in_any_order() -> None:
    early = FinalReport("d", ReportedStatus.ERROR, at(5), template="failover")
    late = FinalReport("d", ReportedStatus.COMPLETED, at(9), template="failover")
    results = set()
    for order in ([early, late], [late, early]):
        state: DispatchState | None = None
        found: set[Discrepancy] = set()
        for report in order:
            t = apply_final_report(state, report)
            state, found = t.state, found | set(t.discrepancies)
        assert state is not None
        results.add((state, frozenset(found)))
    assert len(results) == 1
    state, found = results.pop()
    assert state.report is not None and state.report.status is ReportedStatus.COMPLETED
    assert [d.kind for d in found] == ["final_report_conflict"]


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [("0.0300", "0.03"), ("0.0333", "0.0333"), ("100", "100"), ("1.50", "1.5"), ("0.000", "0")],
)
def test_one_price_has_one_spelling(spelled: str, canonical: str) -> None:
    assert format(Money(Decimal(spelled), "EUR").amount, "f") == canonical
    state, found = run(
        [
            ev(S.SUBMITTED, 0, usage=Money(Decimal(canonical), "EUR")),
            ev(S.DELIVERED, 1, usage=Money(Decimal(spelled), "EUR")),
        ]
    )
    assert found == set()
    assert state.usage == Money(Decimal(canonical), "EUR")


def test_computed_usage_is_exact_and_per_currency() -> None:
    messages = [
        MessageState("a", usage=Money(Decimal("0.1"), "EUR")),
        MessageState("b", usage=Money(Decimal("0.2"), "EUR")),
        MessageState("c", usage=Money(Decimal("0.05"), "USD")),
        MessageState("d"),
    ]
    assert computed_usage(messages) == {"EUR": Decimal("0.3"), "USD": Decimal("0.05")}


# --- a whole three-message workflow, every arrival order ------------------------


Fold = tuple[dict[str, MessageState], DispatchState | None, frozenset[Discrepancy]]


def fold(events: list[StatusEvent | FinalReport]) -> Fold:
    """Apply events the way the storage layer does: one transition per row."""
    messages: dict[str, MessageState] = {}
    dispatch: DispatchState | None = None
    found: set[Discrepancy] = set()
    for event in events:
        if isinstance(event, StatusEvent):
            t = apply_status(messages.get(event.message_uuid), event)
            messages[event.message_uuid] = t.state
            found |= set(t.discrepancies)
        else:
            for reported in event.messages:
                mt = apply_reported_message(
                    messages.get(reported.message_uuid), event.dispatch_uuid, reported
                )
                messages[reported.message_uuid] = mt.state
                found |= set(mt.discrepancies)
            dt = apply_final_report(dispatch, event)
            dispatch = dt.state
            found |= set(dt.discrepancies)
    return messages, dispatch, frozenset(found)


def workflow_events() -> list[StatusEvent | FinalReport]:
    events: list[StatusEvent | FinalReport] = []
    for kind, payload in payloads.three_message_workflow("d-1"):
        cb_kind = (
            CallbackKind.MESSAGE_STATUS if kind == "message-status" else CallbackKind.FINAL_REPORT
        )
        import json

        callback = read(cb_kind, json.dumps(payload).encode(), max_depth=32)
        assert isinstance(callback.event, StatusEvent | FinalReport)
        events.append(callback.event)
    return events


def test_every_arrival_order_of_a_three_message_workflow_gives_the_same_state() -> None:
    events = workflow_events()
    expected = fold(events)
    messages, dispatch, _ = expected
    # The canonical order itself is right before comparing others to it.
    assert {uuid: m.status for uuid, m in messages.items()} == {
        "m-1-messenger": S.DELIVERED,
        "m-2-viber": S.REJECTED,
        "m-3-sms": S.DELIVERED,
    }
    assert dispatch is not None and dispatch.report is not None
    assert dispatch.report.status is ReportedStatus.COMPLETED
    assert computed_usage(messages.values()) == {"EUR": Decimal("0.0433")}
    assert messages["m-2-viber"].channel is Channel.VIBER_SERVICE_MSG

    count = 0
    for order in itertools.permutations(events):
        assert fold(list(order)) == expected, order
        count += 1
    assert count == 5040  # 7 callbacks: every order, so every pair of orders agrees


def test_duplicates_in_any_order_change_nothing() -> None:
    events = workflow_events()
    expected = fold(events)
    rng = random.Random(7)
    for _ in range(200):
        noisy = events + rng.choices(events, k=rng.randint(1, 10))
        rng.shuffle(noisy)
        assert fold(noisy) == expected


# --- property: any events, any order -----------------------------------------

statuses = st.sampled_from(list(MessageStatus))
moments = st.integers(min_value=0, max_value=20).map(at)
money = st.builds(
    Money,
    st.sampled_from(["0", "0.0", "0.03", "0.030", "0.0333", "1", "1.00", "100"]).map(Decimal),
    st.sampled_from(["EUR", "USD"]),
)
status_events = st.builds(
    StatusEvent,
    message_uuid=st.just("m"),
    status=statuses,
    occurred_at=moments,
    dispatch_uuid=st.none() | st.sampled_from(["d-1", "d-2"]),
    channel=st.none() | st.sampled_from(list(Channel)),
    error=st.none()
    | st.builds(ErrorInfo, st.none() | st.integers(0, 3), st.none() | st.text(max_size=3)),
    usage=st.none() | money,
    # Messages API statuses: the API, a place in a workflow, the sender's reference.
    api=st.sampled_from(list(Api)),
    item_number=st.none() | st.integers(1, 3),
    items_total=st.none() | st.integers(1, 3),
    client_ref=st.none() | st.sampled_from(["a", "b"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(status_events, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_any_events_in_any_order_give_the_same_message_state(
    events: list[StatusEvent], rng: random.Random
) -> None:
    shuffled = list(events)
    rng.shuffle(shuffled)
    doubled = shuffled + shuffled[: len(shuffled) // 2]
    assert run(events) == run(shuffled) == run(doubled)


def test_final_reports_that_disagree_give_the_same_discrepancies_in_any_order() -> None:
    # The hostile run: a `delivered` status, and two final reports listing the
    # message as `rejected` and as `read`. Whichever report came first, both
    # the contradiction and the reports' conflict are recorded.
    delivered = StatusEvent("m", S.DELIVERED, at(1), dispatch_uuid="d")
    rejected = FinalReport(
        "d", ReportedStatus.ERROR, at(5), messages=(ReportedMessage("m", status=S.REJECTED),)
    )
    read = FinalReport(
        "d", ReportedStatus.COMPLETED, at(6), messages=(ReportedMessage("m", status=S.READ),)
    )
    orders = itertools.permutations([delivered, rejected, read])
    first, *others = [fold(list(order)) for order in orders]
    assert all(other == first for other in others)
    messages, _, found = first
    assert messages["m"].status is S.READ
    assert {d.kind for d in found} == {"status_contradiction", "final_report_conflict"}


reported_messages = st.builds(
    ReportedMessage,
    # Mostly the message the status events are about, so that reports disagree about it.
    message_uuid=st.sampled_from(["m", "m", "m", "n"]),
    channel=st.none() | st.sampled_from(list(Channel)),
    status=st.none() | statuses,
    usage=st.none() | money,
)
final_reports = st.builds(
    FinalReport,
    dispatch_uuid=st.just("d-1"),
    status=st.sampled_from(list(ReportedStatus)),
    occurred_at=moments,
    template=st.none() | st.just("failover"),
    usage=st.none() | money,
    messages=st.lists(
        reported_messages, min_size=1, max_size=2, unique_by=lambda r: r.message_uuid
    ).map(tuple),
)


@settings(max_examples=800, deadline=None)
@given(
    st.lists(status_events | final_reports, min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_any_statuses_and_disagreeing_final_reports_in_any_order_give_the_same_state(
    events: list[StatusEvent | FinalReport], rng: random.Random
) -> None:
    shuffled = list(events)
    rng.shuffle(shuffled)
    doubled = shuffled + shuffled[: len(shuffled) // 2]
    assert fold(events) == fold(shuffled) == fold(doubled)
