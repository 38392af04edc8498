"""Issue 13 point 3: typed settings, checked once at ``init_app``; domain modules read them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from flask_mailoauth.config import DEFAULTS, Config
from flask_mailoauth.errors import SetupError

PACKAGE = Path(__file__).resolve().parents[1] / "flask_mailoauth"

#: at least one unusable value of every key, and a word its SetupError says
BAD_VALUES = [
    ("MAILOAUTH_URL_PREFIX", "mailoauth", "starting with '/'"),
    ("MAILOAUTH_URL_PREFIX", None, "starting with '/'"),
    ("MAILOAUTH_CALLBACK_URL", "/mailoauth/callback", "absolute"),
    ("MAILOAUTH_CALLBACK_URL", "ftp://helpdesk.example/cb", "absolute"),
    ("MAILOAUTH_ENCRYPTION_KEYS", "not-a-key", "generate_key"),
    ("MAILOAUTH_ENCRYPTION_KEYS", {"key": "value"}, "list of keys"),
    ("MAILOAUTH_ALLOW_INSECURE_HTTP", "yes", "True or False"),
    ("MAILOAUTH_ALLOWED_PRIVATE_HOSTS", 10, "host names"),
    ("MAILOAUTH_CA_BUNDLE", "/nonexistent/ca.pem", "PEM file"),
    ("MAILOAUTH_CA_BUNDLE", "/", "is not a file"),
    ("MAILOAUTH_CA_BUNDLE", 42, "PEM file"),
    ("MAILOAUTH_MAX_RESPONSE_BYTES", 0, "at least 1"),
    ("MAILOAUTH_MAX_RESPONSE_BYTES", "1MB", "whole number"),
    ("MAILOAUTH_REFRESH_LEEWAY", -1, "0 or more"),
    ("MAILOAUTH_REFRESH_LEEWAY", "300", "number"),
    ("MAILOAUTH_CACHE_TTL", -5, "0 or more"),
    ("MAILOAUTH_CACHE_SIZE", 0, "at least 1"),
    ("MAILOAUTH_CACHE_SIZE", 10.5, "whole number"),
    ("MAILOAUTH_EVENT_RETENTION_DAYS", -1, "at least 0"),
    ("MAILOAUTH_EVENT_RETENTION_DAYS", "90", "whole number"),
    ("MAILOAUTH_LOCK_TIMEOUT", 0, "more than 0"),
    ("MAILOAUTH_HTTP_TIMEOUT", "10", "number"),
    ("MAILOAUTH_HTTP_TIMEOUT", float("inf"), "finite"),
    ("MAILOAUTH_HTTP_TIMEOUT", float("nan"), "number"),
    ("MAILOAUTH_HTTP_TIMEOUT", True, "number"),
    ("MAILOAUTH_STORE_RETRY", -1, "0 or more"),
    ("MAILOAUTH_MAIL_TIMEOUT", 0, "more than 0"),
    ("MAILOAUTH_PENDING_TTL", 0, "at least 1"),
    ("MAILOAUTH_PENDING_TTL", 60.5, "whole number"),
    ("MAILOAUTH_RETRY_BASE", 0, "more than 0"),
    ("MAILOAUTH_RETRY_MAX", 10, "MAILOAUTH_RETRY_BASE"),
    ("MAILOAUTH_FAILURE_WARNING_THRESHOLD", 0, "at least 1"),
    ("MAILOAUTH_IDLE_WARNING_DAYS", "80", "whole number"),
    ("MAILOAUTH_SECRET_WARNING_DAYS", 30, "list"),
    ("MAILOAUTH_SECRET_WARNING_DAYS", (), "non-empty"),
    ("MAILOAUTH_SECRET_WARNING_DAYS", (30, -1), "0 or more"),
    ("MAILOAUTH_REFRESH_CONCURRENCY", 0, "at least 1"),
    ("MAILOAUTH_FLASH_CATEGORIES", {"danger": "error"}, "'success' and/or 'error'"),
    ("MAILOAUTH_RECONSENT_DAYS", 0, "at least 1"),
    ("MAILOAUTH_RECONSENT_DAYS", "7", "whole number"),
    ("MAILOAUTH_METRICS", "yes", "True or False"),
    ("MAILOAUTH_METRICS", 2, "True or False"),
    ("MAILOAUTH_METRICS_TOKEN", "short", "at least 16"),
    ("MAILOAUTH_METRICS_TOKEN", 1234567890123456789, "at least 16"),
    ("MAILOAUTH_NOTIFY_REMINDER_HOURS", 0, "more than 0"),
    ("MAILOAUTH_NOTIFY_REMINDER_HOURS", "24", "number"),
    ("MAILOAUTH_NOTIFY_WEBHOOK_URL", "hooks.example/notify", "absolute http(s) URL"),
    ("MAILOAUTH_NOTIFY_WEBHOOK_URL", "https://hooks.example/notify", "at least 16 characters"),
    ("MAILOAUTH_NOTIFY_WEBHOOK_SECRET", "short", "at least 16 characters"),
    ("MAILOAUTH_NOTIFY_EMAIL_TO", "admin", "e-mail addresses"),
    ("MAILOAUTH_NOTIFY_EMAIL_TO", ["a@example.test\nBcc: x@evil.test"], "e-mail addresses"),
    ("MAILOAUTH_NOTIFY_MAILBOX", 5, "key of the mailbox"),
]


def test_every_key_has_a_bad_value_below():
    assert {key for key, _, _ in BAD_VALUES} == set(DEFAULTS)


@pytest.mark.parametrize(("key", "value", "says"), BAD_VALUES, ids=lambda v: repr(v)[:40])
def test_a_bad_value_is_a_setup_error_at_init_app(make_host, db_url, key, value, says):
    with pytest.raises(SetupError) as info:
        make_host(db_url=db_url, **{key: value})
    assert key in str(info.value)
    assert says in str(info.value)


#: a well-formed key (32 bytes)
GOOD_KEY = "A" * 43


def test_a_bad_key_is_not_quoted_in_the_error(make_host, db_url):
    """The keys are secrets: the error names their position, never their text."""
    secret = "c2VjcmV0LWJ1dC1ub3QtMzItYnl0ZXM"
    with pytest.raises(SetupError, match="key 2 of 2") as info:
        make_host(db_url=db_url, MAILOAUTH_ENCRYPTION_KEYS=f"{GOOD_KEY},{secret}")
    assert secret not in str(info.value)


def test_the_metrics_token_is_not_quoted_in_the_error_nor_in_the_config_repr(make_host, db_url):
    with pytest.raises(SetupError) as info:
        make_host(db_url=db_url, MAILOAUTH_METRICS_TOKEN="tooshort-secret")
    assert "tooshort-secret" not in str(info.value)
    token = "a-long-enough-scrape-token"
    config = Config.from_mapping({"MAILOAUTH_METRICS": 1, "MAILOAUTH_METRICS_TOKEN": token})
    assert (config.metrics_endpoint, config.metrics_token) == (True, token)
    assert token not in repr(config)


def test_the_defaults_and_what_environments_give_are_accepted():
    config = Config.from_mapping({})
    assert config.http_timeout == 10
    assert config.secret_warning_days == (30, 7)
    assert not config.allow_insecure_http
    # Flask's from_prefixed_env turns MAILOAUTH_ALLOW_INSECURE_HTTP=1 into the number 1
    assert Config.from_mapping({"MAILOAUTH_ALLOW_INSECURE_HTTP": 1}).allow_insecure_http
    hosts = Config.from_mapping({"MAILOAUTH_ALLOWED_PRIVATE_HOSTS": "sso.corp.test 10.0.0.0/8"})
    assert hosts.outbound.allowed_private_hosts == frozenset({"sso.corp.test"})
    assert (config.cache_size, config.event_retention_days) == (1024, 90)
    for forever in (0, None):
        kept = Config.from_mapping({"MAILOAUTH_EVENT_RETENTION_DAYS": forever})
        assert kept.event_retention_days is None


def test_the_settings_are_frozen_and_read_once(make_host, db_url):
    """A change to app.config after init_app changes nothing: the state holds the checked
    settings, and the domain modules read those."""
    h = make_host(db_url=db_url, MAILOAUTH_HTTP_TIMEOUT=3)
    st = h.app.extensions["mailoauth"]
    h.app.config["MAILOAUTH_HTTP_TIMEOUT"] = "broken"
    assert st.config.http_timeout == 3
    with pytest.raises(AttributeError):
        st.config.http_timeout = 4  # type: ignore[misc]


DOMAIN_MODULES = ("tokens", "flow", "accounts", "health", "cli")


@pytest.mark.parametrize("name", DOMAIN_MODULES)
def test_domain_modules_never_read_the_flask_config(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    reads = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "config"
        and isinstance(node.value, ast.Name)
        and node.value.id in ("current_app", "app")
    ]
    assert reads == []


def test_the_ca_bundle_is_what_idp_certificates_are_checked_against(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert Config.from_mapping({"MAILOAUTH_CA_BUNDLE": bundle}).outbound.verify == str(bundle)
    assert Config.from_mapping({}).outbound.verify is True  # the default CA store
