"""Issue 16 point 1: notifications once per condition across processes, reminders at the
cadence, a recovery message; the webhook signed and retried; e-mail through a healthy mailbox;
nothing for a healthy account."""

from __future__ import annotations

import contextlib
import email
import logging
import multiprocessing
import socket
import threading
import time
from datetime import date, timedelta

import pytest
import responses
import sqlalchemy as sa

from flask_mailoauth import MailboxSettings, notify, signals
from flask_mailoauth.errors import ReauthorizationRequired
from flask_mailoauth.models import own_session, utcnow
from flask_mailoauth.notification import Notification
from flask_mailoauth.vocabulary import Condition, CredentialStatus, NoticeKind
from peers.tls import test_ca

from .conftest import TEST_KEY
from .notify_peers import (
    SECRET,
    check_in_child,
    refuse,
    set_credential,
    smtp_sink,
    webhook_receiver,
)
from .oauth_fakes import TokenEndpoint
from .stored import store_account, token


@pytest.fixture
def notified(make_host, db_url):
    """A host on SQLite and PostgreSQL whose ``@notifier`` callback collects every message."""
    sent: list[Notification] = []

    def build(**config):
        host = make_host(db_url=db_url, **config)
        host.ext.notifier(sent.append)
        host.ext.account_page(lambda key, purpose: f"https://helpdesk.test/mailboxes/{key}")
        return host, sent

    return build


def check(host, **kw):
    with host.app.app_context():
        return notify.check(host.app.extensions["mailoauth"], **kw)


def notices(host):
    st = host.app.extensions["mailoauth"]
    with host.app.app_context(), own_session(st.db) as s:
        return s.scalars(sa.select(st.models.Notice).order_by(st.models.Notice.id)).all()


def move_back(host, hours):
    """Move every notice's last message ``hours`` into the past (no sleeping)."""
    st = host.app.extensions["mailoauth"]
    table = st.models.Notice.__table__
    with host.app.app_context(), own_session(st.db) as s:
        for notice in s.scalars(sa.select(st.models.Notice)):
            s.execute(
                sa.update(table)
                .where(table.c.id == notice.id)
                .values(notified_at=notice.notified_at - timedelta(hours=hours))
            )


def test_nothing_is_sent_for_a_healthy_account(notified):
    host, sent = notified()
    store_account(host)
    assert check(host) == []
    assert sent == []
    assert notices(host) == []


def test_a_refused_grant_is_notified_once_with_what_since_code_action_and_link(notified):
    host, sent = notified()
    store_account(host)
    refuse(host)
    before = utcnow()
    [message] = check(host)
    assert sent == [message]
    assert message.kind == NoticeKind.PROBLEM
    assert message.condition == Condition.REAUTHORIZATION_REQUIRED
    assert (message.key, message.purpose, message.code) == ("support", "mailbox", "AADSTS700082")
    assert message.since >= before
    assert "inactivity" in message.detail
    assert "sign in again" in message.action
    assert message.url == "https://helpdesk.test/mailboxes/support"
    text = message.text()
    for part in ("Reauthorization required", "AADSTS700082", "What to do:", message.url):
        assert part in text
    assert check(host) == [], "one message per condition, not one per check"
    assert len(sent) == 1


def test_a_reminder_after_the_cadence_then_a_recovery_then_a_new_problem(notified):
    host, sent = notified(MAILOAUTH_NOTIFY_REMINDER_HOURS=24)
    store_account(host)
    refuse(host)
    check(host)
    move_back(host, 23)
    assert check(host) == [], "no reminder before the cadence"
    move_back(host, 2)
    [reminder] = check(host)
    assert reminder.kind == NoticeKind.REMINDER
    assert reminder.since == sent[0].since
    assert reminder.subject.startswith("Reminder:")
    assert check(host) == []
    [row] = notices(host)
    assert row.reminders == 1

    set_credential(host, status=CredentialStatus.ACTIVE.value, failure_count=0)
    [recovered] = check(host)
    assert recovered.kind == NoticeKind.RECOVERED
    assert recovered.condition == Condition.REAUTHORIZATION_REQUIRED
    assert recovered.subject.startswith("Resolved:")
    assert (recovered.code, recovered.action) == (None, "")
    assert check(host) == []

    refuse(host)
    [again] = check(host)
    assert again.kind == NoticeKind.PROBLEM
    assert again.since > sent[0].since
    assert [m.kind for m in sent] == ["problem", "reminder", "recovered", "problem"]


def test_transient_failures_past_the_threshold_and_warnings_are_conditions(notified):
    host, _sent = notified(MAILOAUTH_FAILURE_WARNING_THRESHOLD=3)
    store_account(host)
    set_credential(host, status="retrying", failure_count=2, last_error_code="http_503")
    assert check(host) == []
    set_credential(
        host,
        failure_count=3,
        secret_expires_on=date.today() + timedelta(days=5),
        refreshed_at=utcnow() - timedelta(days=85),
    )
    found = {m.condition: m for m in check(host)}
    assert set(found) == {
        Condition.REPEATED_FAILURES,
        Condition.SECRET_EXPIRING,
        Condition.REFRESH_TOKEN_IDLE,
    }
    assert found[Condition.REPEATED_FAILURES].code == "http_503"
    assert found[Condition.SECRET_EXPIRING].code is None
    set_credential(host, secret_expires_on=date.today() - timedelta(days=1))
    changed = {(m.kind, m.condition) for m in check(host)}
    assert changed == {
        (NoticeKind.RECOVERED, Condition.SECRET_EXPIRING),
        (NoticeKind.PROBLEM, Condition.SECRET_EXPIRED),
    }
    # the failures end in a refusal: one message about the refusal, none saying they stopped
    refuse(host)
    changed = {(m.kind, m.condition) for m in check(host)}
    assert changed == {(NoticeKind.PROBLEM, Condition.REAUTHORIZATION_REQUIRED)}
    assert {n.condition for n in notices(host) if n.resolved_at is None} == {
        Condition.REAUTHORIZATION_REQUIRED,
        Condition.SECRET_EXPIRED,
        Condition.REFRESH_TOKEN_IDLE,
    }


def test_the_dedupe_key_is_the_condition_not_its_translated_text(notified, pseudo_locale):
    from flask_babel import Babel

    host, sent = notified()
    store_account(host)
    refuse(host)
    check(host)
    Babel(host.app, default_locale=pseudo_locale)
    with host.app.app_context():
        assert str(notify.TITLES[Condition.REAUTHORIZATION_REQUIRED]) != "Reauthorization required"
    assert check(host) == []
    assert len(sent) == 1
    move_back(host, 25)
    [reminder] = check(host)
    assert reminder.title != sent[0].title, "the reminder is in the admin's language now"


def test_a_disabled_account_is_left_alone(notified):
    host, sent = notified()
    store_account(host)
    refuse(host)
    set_credential(host, enabled=False)
    assert check(host) == []
    assert sent == []


def test_without_a_channel_nothing_is_stored(make_host):
    host = make_host()
    store_account(host)
    refuse(host)
    assert check(host) == []
    assert notices(host) == []


def test_a_refresh_that_fails_notifies_in_the_background_and_a_success_recovers(notified):
    host, sent = notified()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        idp = TokenEndpoint(mock)
        store_account(host, expires_in=-5)
        idp.answers.append(("error", (400, {"error": "invalid_grant"}, {})))
        with pytest.raises(ReauthorizationRequired):
            token(host)
        notify.wait(10)
        assert [(m.kind, m.condition, m.code) for m in sent] == [
            ("problem", "reauthorization_required", "invalid_grant")
        ]
        # an admin authorizes again; the next refresh succeeds and the recovery goes out
        set_credential(host, status=CredentialStatus.ACTIVE.value, failure_count=0)
        with host.app.app_context():
            host.ext.refresh("support")
        notify.wait(10)
    assert [m.kind for m in sent] == ["problem", "recovered"]


def test_checks_after_many_refreshes_queue_on_one_thread_once_per_account(notified):
    host, sent = notified()
    store_account(host)
    refuse(host)
    gate = threading.Event()

    @host.ext.notifier
    def slow(notification):
        gate.wait(10)
        sent.append(notification)

    with host.app.app_context():
        for _ in range(20):
            signals.refreshed.send(host.ext, key="support", purpose="mailbox", expires_at=utcnow())
    workers = [t for t in threading.enumerate() if t.name == "mailoauth-notify"]
    gate.set()
    notify.wait(10)
    assert len(workers) == 1
    assert len(sent) == 1


def test_a_failing_callback_stops_neither_the_refresh_nor_the_webhook(make_host, db_url, caplog):
    with webhook_receiver() as hook:
        host = make_host(
            db_url=db_url,
            MAILOAUTH_NOTIFY_WEBHOOK_URL=hook.url,
            MAILOAUTH_NOTIFY_WEBHOOK_SECRET=SECRET,
        )

        @host.ext.notifier
        def broken(notification):
            raise RuntimeError("the host's pager is down")

        store_account(host)
        refuse(host)
        with caplog.at_level(logging.ERROR, "flask_mailoauth"):
            [message] = check(host)
        assert "pager is down" in caplog.text
        [delivery] = hook.deliveries
    assert delivery.verified
    assert delivery.body["condition"] == "reauthorization_required"
    assert delivery.body["code"] == "AADSTS700082"
    assert delivery.body["subject"] == message.subject


def test_the_webhook_is_signed_and_retried_on_5xx_with_one_delivery_id(
    make_host, db_url, monkeypatch
):
    monkeypatch.setattr(notify, "WEBHOOK_FIRST_PAUSE", 0.01)
    with webhook_receiver(503, 502) as hook:
        host = make_host(
            db_url=db_url,
            MAILOAUTH_NOTIFY_WEBHOOK_URL=hook.url,
            MAILOAUTH_NOTIFY_WEBHOOK_SECRET=SECRET,
        )
        store_account(host)
        refuse(host)
        check(host)
        deliveries = hook.deliveries
    assert [d.headers["X-Answer"] for d in deliveries] == ["503", "502", "200"]
    assert all(d.verified for d in deliveries), "the receiver checked every signature"
    assert len({d.headers["X-MailOAuth-Delivery"] for d in deliveries}) == 1
    assert deliveries[-1].body["kind"] == "problem"


def test_a_wrong_secret_fails_verification_and_4xx_is_not_retried(make_host, db_url, caplog):
    with webhook_receiver(secret="another-secret-entirely-0000") as hook:
        host = make_host(
            db_url=db_url,
            MAILOAUTH_NOTIFY_WEBHOOK_URL=hook.url,
            MAILOAUTH_NOTIFY_WEBHOOK_SECRET=SECRET,
        )
        store_account(host)
        refuse(host)
        with caplog.at_level(logging.ERROR, "flask_mailoauth"):
            check(host)
        assert [d.verified for d in hook.deliveries] == [False]
    assert "HTTP 401" in caplog.text


def test_the_webhook_gives_up_after_the_attempts_and_respects_the_outbound_policy(
    make_host, monkeypatch, caplog
):
    monkeypatch.setattr(notify, "WEBHOOK_FIRST_PAUSE", 0.01)
    with webhook_receiver(500, 500, 500, 500, 500) as hook:
        host = make_host(
            MAILOAUTH_NOTIFY_WEBHOOK_URL=hook.url, MAILOAUTH_NOTIFY_WEBHOOK_SECRET=SECRET
        )
        store_account(host)
        refuse(host)
        with caplog.at_level(logging.ERROR, "flask_mailoauth"):
            check(host)
        assert len(hook.deliveries) == notify.WEBHOOK_ATTEMPTS
    assert "HTTP 500" in caplog.text
    with webhook_receiver() as hook:
        host = make_host(
            MAILOAUTH_ALLOW_INSECURE_HTTP=False,
            MAILOAUTH_NOTIFY_WEBHOOK_URL=hook.url,
            MAILOAUTH_NOTIFY_WEBHOOK_SECRET=SECRET,
        )
        store_account(host, key="other")
        refuse(host, key="other")
        caplog.clear()
        with caplog.at_level(logging.ERROR, "flask_mailoauth"):
            check(host)
        assert hook.deliveries == [], "a loopback http:// URL needs MAILOAUTH_ALLOW_INSECURE_HTTP"
    assert "MAILOAUTH_NOTIFY_WEBHOOK_URL" in caplog.text
    # a private address is refused before connecting, and not tried again
    host = make_host(
        MAILOAUTH_NOTIFY_WEBHOOK_URL="https://10.255.255.1/hooks",
        MAILOAUTH_NOTIFY_WEBHOOK_SECRET=SECRET,
    )
    store_account(host, key="third")
    refuse(host, key="third")
    caplog.clear()
    with caplog.at_level(logging.ERROR, "flask_mailoauth"):
        check(host)
    assert "by webhook: MAILOAUTH_NOTIFY_WEBHOOK_URL: 10.255.255.1 resolves" in caplog.text
    assert "MAILOAUTH_ALLOWED_PRIVATE_HOSTS" in caplog.text


def test_a_webhook_that_never_answers_times_out_and_is_retried(make_host, monkeypatch, caplog):
    monkeypatch.setattr(notify, "WEBHOOK_FIRST_PAUSE", 0.01)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def hold() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=hold, daemon=True).start()
    try:
        host = make_host(
            MAILOAUTH_HTTP_TIMEOUT=0.2,
            MAILOAUTH_NOTIFY_WEBHOOK_URL=f"http://127.0.0.1:{listener.getsockname()[1]}/hook",
            MAILOAUTH_NOTIFY_WEBHOOK_SECRET=SECRET,
        )
        store_account(host)
        refuse(host)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, "flask_mailoauth"):
            [message] = check(host)
        took = time.monotonic() - started
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert len(accepted) == notify.WEBHOOK_ATTEMPTS
    assert took < notify.WEBHOOK_ATTEMPTS * 2 * 0.2 + 2
    assert "the webhook failed: ReadTimeout" in caplog.text
    assert message.kind == NoticeKind.PROBLEM


def _mail_host(make_host, db_url, sink):
    host = make_host(
        db_url=db_url,
        MAILOAUTH_NOTIFY_EMAIL_TO="admin@example.test, oncall@example.test",
        MAILOAUTH_NOTIFY_MAILBOX="alerts",
    )
    host.mailboxes["alerts"] = MailboxSettings(
        address="alerts@example.test",
        smtp_host=sink.host,
        smtp_port=sink.port,
        smtp_security="none",
    )
    host.mailboxes["other"] = MailboxSettings(address="other@example.test")
    store_account(host, key="alerts", purpose="smtp", access="alerts-token")
    return host


def test_email_goes_through_the_named_mailbox_to_the_recipients(make_host, db_url):
    with smtp_sink() as sink:
        host = _mail_host(make_host, db_url, sink)
        store_account(host, key="other")
        refuse(host, key="other")
        [message] = check(host)
        [(auth, sender, recipients, text)] = sink.messages
    assert auth.startswith("AUTH XOAUTH2 ")
    assert "alerts@example.test" in sender
    assert [r.split(":", 1)[1].strip(" <>") for r in recipients] == [
        "admin@example.test",
        "oncall@example.test",
    ]
    mail = email.message_from_string(text)
    assert mail["Subject"] == message.subject
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "AADSTS700082" in mail.get_payload()


def test_email_never_goes_through_the_broken_mailbox(make_host, db_url, caplog):
    with smtp_sink() as sink:
        host = _mail_host(make_host, db_url, sink)
        refuse(host, key="alerts")
        with caplog.at_level(logging.ERROR, "flask_mailoauth"):
            [message] = check(host)
        assert sink.messages == []
    assert message.key == "alerts"
    assert "is the mailbox in trouble" in caplog.text


def test_the_cli_command_checks_every_account(notified):
    host, sent = notified()
    store_account(host)
    store_account(host, key="other")
    refuse(host, key="other")
    runner = host.app.test_cli_runner()
    result = runner.invoke(args=["mailoauth", "notify"])
    assert result.exit_code == 0, result.output
    assert "1 notification sent." in result.output
    assert [m.key for m in sent] == ["other"]
    result = runner.invoke(args=["mailoauth", "notify"])
    assert "0 notifications sent." in result.output


def test_refresh_due_ends_with_the_check_that_finds_warnings_that_come_with_time(notified):
    host, sent = notified()
    store_account(host)
    set_credential(host, secret_expires_on=date.today() + timedelta(days=3))
    result = host.app.test_cli_runner().invoke(args=["mailoauth", "refresh", "--due"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "1 notification sent."
    assert [m.condition for m in sent] == [Condition.SECRET_EXPIRING]


def test_without_a_channel_refresh_due_says_nothing_of_notifications(host):
    store_account(host)
    result = host.app.test_cli_runner().invoke(args=["mailoauth", "refresh", "--due"])
    assert "notification" not in result.output
    result = host.app.test_cli_runner().invoke(args=["mailoauth", "notify"])
    assert "No notification channel is configured" in result.output


def four_workers_check(db_url, hook_url):
    """Four spawned workers check at once; what each claimed."""
    ctx = multiprocessing.get_context("spawn")
    start, claim, out = ctx.Barrier(4), ctx.Barrier(4), ctx.Queue()
    args = (db_url, TEST_KEY, str(test_ca().ca_file), hook_url, start, claim, out)
    children = [ctx.Process(target=check_in_child, args=args) for _ in range(4)]
    for child in children:
        child.start()
    try:
        claimed = [out.get(timeout=90) for _ in children]
    finally:
        for child in children:
            child.join(timeout=30)
        out.close()
        out.join_thread()
    assert [child.exitcode for child in children] == [0] * 4
    return sorted(claimed)


def test_one_message_from_four_processes_for_a_failure_its_reminder_and_recovery(make_host, db_url):
    """Four workers find the same failure at the same moment, each read the notices before
    any claims: the receiver gets one message; the same for the reminder and the recovery."""
    with webhook_receiver() as hook:
        host = make_host(db_url=db_url)
        store_account(host)
        refuse(host)
        with host.app.app_context():
            host.db.engine.dispose()
        assert four_workers_check(db_url, hook.url) == [[], [], [], ["problem"]]
        move_back(host, 25)
        assert four_workers_check(db_url, hook.url) == [[], [], [], ["reminder"]]
        set_credential(host, status=CredentialStatus.ACTIVE.value, failure_count=0)
        assert four_workers_check(db_url, hook.url) == [[], [], [], ["recovered"]]
        assert [d.body["kind"] for d in hook.deliveries] == ["problem", "reminder", "recovered"]
        assert all(d.verified for d in hook.deliveries)
    [row] = notices(host)
    assert row.condition == "reauthorization_required"
    assert row.resolved_at is not None
