"""Failover decisions as pure code: every time rule at its exact boundary."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from app.model.failover import Definition, Outcome, Step, assign, evaluate
from app.model.state import (
    Channel,
    DispatchStatus,
    MessageState,
    MessageStatus,
    Money,
    Report,
    ReportedStatus,
    StatusEvent,
    apply_status,
)

S = MessageStatus
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)

# Messenger until read within 600 s, then Viber until delivered within 300 s, then SMS.
THREE = Definition(
    (
        Step(Channel.MESSENGER, S.READ, 600),
        Step(Channel.VIBER_SERVICE_MSG, S.DELIVERED, 300),
        Step(Channel.SMS),
    )
)


def msg(uuid: str, channel: Channel, price: str | None = None, **times: timedelta) -> MessageState:
    """A message with statuses at T0 + offset, e.g. submitted=timedelta(0)."""
    return MessageState(
        uuid,
        dispatch_uuid="d",
        channel=channel,
        status_times={S(name): T0 + offset for name, offset in times.items()},
        usage=Money(Decimal(price), "EUR") if price else None,
    )


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


FB = Channel.MESSENGER
VB = Channel.VIBER_SERVICE_MSG
SMS = Channel.SMS


@pytest.mark.parametrize(
    ("read_after", "status", "current"),
    [
        (s(600) - MS, DispatchStatus.COMPLETED, None),  # just before the deadline
        (s(600), DispatchStatus.COMPLETED, None),  # at the deadline: still within
        (s(600) + MS, DispatchStatus.PENDING, 2),  # just after: failover to step 2
    ],
)
def test_condition_reached_at_the_expiry_boundary(
    read_after: timedelta, status: DispatchStatus, current: int | None
) -> None:
    messenger = msg("m1", FB, submitted=s(0), delivered=s(1), read=read_after)
    decision, _ = evaluate(THREE, [messenger], None)
    assert decision.status is status
    assert decision.decided_by == "definition"
    assert decision.current_step == current
    if status is DispatchStatus.COMPLETED:
        assert decision.winning_step == 1
        assert decision.decided_at == T0 + read_after
    else:
        # Step 1 expired at its deadline; step 2 was due from then on.
        assert decision.steps[0].outcome is Outcome.EXPIRED
        assert decision.due_at == T0 + s(600)


def test_the_deadline_runs_from_submission() -> None:
    messenger = msg("m1", FB, submitted=s(0), delivered=s(5))
    decision, _ = evaluate(THREE, [messenger], None)
    assert decision.status is DispatchStatus.PENDING
    assert decision.current_step == 1
    assert decision.due_at == T0 + s(600)
    assert decision.steps[0].deadline == T0 + s(600)


def test_delivered_is_not_read() -> None:
    # Delivered in time but never read: step 1's condition is `read`, so when
    # Viber appears, step 1 expired rather than succeeded.
    messenger = msg("m1", FB, submitted=s(0), delivered=s(5))
    viber = msg("m2", VB, submitted=s(600), delivered=s(620))
    decision, _ = evaluate(THREE, [messenger, viber], None)
    assert [r.outcome for r in decision.steps] == [
        Outcome.EXPIRED,
        Outcome.SUCCEEDED,
        Outcome.NOT_REACHED,
    ]
    assert (decision.status, decision.winning_step) == (DispatchStatus.COMPLETED, 2)


def test_read_implies_delivered_for_a_delivered_condition() -> None:
    messenger = msg("m1", FB, submitted=s(0), delivered=s(700))
    viber = msg("m2", VB, submitted=s(600), read=s(650))  # no delivered callback
    decision, _ = evaluate(THREE, [messenger, viber], None)
    assert (decision.status, decision.winning_step) == (DispatchStatus.COMPLETED, 2)


@pytest.mark.parametrize(
    ("delivered_after", "winner"),
    [(s(300) - MS, 2), (s(300), 2), (s(300) + MS, None)],
)
def test_second_step_boundary(delivered_after: timedelta, winner: int | None) -> None:
    messenger = msg("m1", FB, submitted=s(0), rejected=s(1))
    viber = msg("m2", VB, submitted=s(2), delivered=s(2) + delivered_after)
    decision, _ = evaluate(THREE, [messenger, viber], None)
    assert decision.winning_step == winner
    if winner is None:
        assert (decision.status, decision.current_step) == (DispatchStatus.PENDING, 3)
        assert decision.due_at == T0 + s(302)  # Viber's deadline: SMS due from then


def test_immediate_failure_fails_over_at_once() -> None:
    messenger = msg("m1", FB, submitted=s(0), rejected=s(1))
    decision, _ = evaluate(THREE, [messenger], None)
    assert decision.steps[0].outcome is Outcome.FAILED
    assert (decision.status, decision.current_step) == (DispatchStatus.PENDING, 2)
    assert decision.due_at == T0 + s(1)  # Viber is due now, not at the expiry


def test_last_step_delivered_completes_and_failed_errors() -> None:
    first = msg("m1", FB, submitted=s(0), undeliverable=s(1))
    second = msg("m2", VB, submitted=s(2), rejected=s(3))
    delivered = msg("m3", SMS, submitted=s(4), delivered=s(9))
    failed = msg("m3", SMS, submitted=s(4), undeliverable=s(9))
    done, _ = evaluate(THREE, [first, second, delivered], None)
    assert (done.status, done.winning_step, done.decided_at) == (
        DispatchStatus.COMPLETED,
        3,
        T0 + s(9),
    )
    broken, _ = evaluate(THREE, [first, second, failed], None)
    assert (broken.status, broken.decided_at) == (DispatchStatus.ERROR, T0 + s(9))


def test_last_step_waits_without_deadline() -> None:
    first = msg("m1", FB, submitted=s(0), rejected=s(1))
    second = msg("m2", VB, submitted=s(2), rejected=s(3))
    sms = msg("m3", SMS, submitted=s(4))
    decision, _ = evaluate(THREE, [first, second, sms], None)
    assert (decision.status, decision.current_step, decision.due_at) == (
        DispatchStatus.PENDING,
        3,
        None,
    )


def test_a_step_whose_message_never_arrived_is_missing() -> None:
    first = msg("m1", FB, submitted=s(0), rejected=s(1))
    sms = msg("m3", SMS, submitted=s(400), delivered=s(405))
    decision, _ = evaluate(THREE, [first, sms], None)
    assert [r.outcome for r in decision.steps] == [
        Outcome.FAILED,
        Outcome.MISSING,
        Outcome.SUCCEEDED,
    ]
    assert decision.status is DispatchStatus.COMPLETED


def test_steps_on_the_same_channel_map_by_order_of_appearance() -> None:
    twice = Definition((Step(SMS, S.DELIVERED, 60), Step(SMS)))
    late_first = msg("z-first", SMS, submitted=s(0), undeliverable=s(2))
    second = msg("a-second", SMS, submitted=s(3), delivered=s(4))
    assigned, unmatched = assign(twice, [second, late_first])
    assert {i: m.message_uuid for i, m in assigned.items()} == {0: "z-first", 1: "a-second"}
    assert unmatched == []
    decision, _ = evaluate(twice, [second, late_first], None)
    assert (decision.status, decision.winning_step) == (DispatchStatus.COMPLETED, 2)


def test_without_a_definition_the_decision_is_unknown_until_the_report() -> None:
    messenger = msg("m1", FB, submitted=s(0), read=s(5))
    assert evaluate(None, [messenger], None)[0].decided_by is None
    assert evaluate(None, [messenger], None)[0].status is DispatchStatus.PENDING
    report = Report(T0 + s(6), ReportedStatus.COMPLETED)
    decision, findings = evaluate(None, [messenger], report)
    assert (decision.status, decision.decided_by) == (DispatchStatus.COMPLETED, "final_report")
    assert findings == []


def report(status: ReportedStatus, at: timedelta, price: str | None = None) -> Report:
    usage = Money(Decimal(price), "EUR") if price else None
    return Report(T0 + at, status, usage)


def test_a_report_that_contradicts_the_definition_is_recorded() -> None:
    messenger = msg("m1", FB, "0.01", submitted=s(0), read=s(30))
    decision, findings = evaluate(THREE, [messenger], report(ReportedStatus.ERROR, s(31)))
    assert (decision.status, decision.decided_by) == (DispatchStatus.COMPLETED, "definition")
    assert [f.kind for f in findings] == ["status_mismatch"]
    assert "final report says error" in findings[0].detail
    assert "step 1 (messenger) reached read in time" in findings[0].detail


def test_a_report_the_callbacks_cannot_confirm_is_followed_and_recorded() -> None:
    messenger = msg("m1", FB, submitted=s(0))
    decision, findings = evaluate(THREE, [messenger], report(ReportedStatus.COMPLETED, s(30)))
    assert (decision.status, decision.decided_by) == (DispatchStatus.COMPLETED, "final_report")
    assert [f.kind for f in findings] == ["undecided_at_final_report"]


def test_a_late_delivery_missing_from_the_report_total_is_explained() -> None:
    messenger = msg("m1", FB, "0.0100", submitted=s(0), rejected=s(1))
    viber = msg("m2", VB, "0.0200", submitted=s(2), delivered=s(900))  # after the report
    sms = msg("m3", SMS, "0.0333", submitted=s(302), delivered=s(310))
    listed = [
        MessageState(**{**m.__dict__, "reported_statuses": frozenset({m.status})})
        for m in (messenger, viber, sms)
    ]
    decision, findings = evaluate(THREE, listed, report(ReportedStatus.COMPLETED, s(311), "0.0433"))
    assert decision.status is DispatchStatus.COMPLETED
    [finding] = findings
    assert finding.kind == "usage_mismatch"
    assert "final report total 0.0433 EUR; computed 0.0633 EUR" in finding.detail
    assert "message m2" in finding.detail and "after the final report" in finding.detail


def test_a_zero_total_matches_nothing_charged() -> None:
    failed = msg("m1", FB, submitted=s(0), rejected=s(1))
    _, findings = evaluate(None, [failed], report(ReportedStatus.ERROR, s(2), "0"))
    assert findings == []
    _, findings = evaluate(None, [failed], report(ReportedStatus.ERROR, s(2), "0.01"))
    assert [f.kind for f in findings] == ["usage_mismatch"]


def test_a_message_of_no_step_is_unexpected() -> None:
    messenger = msg("m1", FB, submitted=s(0), read=s(5))
    stray = msg("m9", Channel.WHATSAPP, submitted=s(1))
    _, findings = evaluate(THREE, [messenger, stray], report(ReportedStatus.COMPLETED, s(6)))
    assert [f.kind for f in findings] == ["unexpected_message"]


def test_decisions_do_not_depend_on_arrival_order() -> None:
    events = [
        StatusEvent("m1", S.SUBMITTED, T0, channel=FB),
        StatusEvent("m1", S.DELIVERED, T0 + s(3), channel=FB),
        StatusEvent("m1", S.READ, T0 + s(700), channel=FB),  # read, but too late
        StatusEvent("m2", S.SUBMITTED, T0 + s(600), channel=VB),
        StatusEvent("m2", S.UNDELIVERABLE, T0 + s(601), channel=VB),
        StatusEvent("m3", S.SUBMITTED, T0 + s(602), channel=SMS),
    ]
    results = set()
    for order in itertools.permutations(events):
        messages: dict[str, MessageState] = {}
        for event in order:
            messages[event.message_uuid] = apply_status(
                messages.get(event.message_uuid), event
            ).state
        decision, _ = evaluate(THREE, list(messages.values()), None)
        results.add(decision)
    [decision] = results
    assert [r.outcome for r in decision.steps] == [Outcome.EXPIRED, Outcome.FAILED, Outcome.PENDING]
    assert decision.current_step == 3
