"""The provider registry: built-ins, register(), and plugins loaded from entry points."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest

from flask_mailoauth.providers import (
    GenericProvider,
    GoogleProvider,
    MicrosoftProvider,
    Provider,
    registry,
)
from flask_mailoauth.providers.base import field_problems

PLUGIN_MODULE = "mailoauth_test_plugin"


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Each test sees the built-ins only and leaves the real registry as it found it."""
    builtins = {i: registry._providers[i] for i in registry.BUILTIN_IDS}
    monkeypatch.setattr(registry, "_providers", builtins)
    monkeypatch.setattr(registry, "_plugin_ids", set())
    monkeypatch.setattr(registry, "_failed", {})
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    # Only this module's fake distribution: provider packages installed in the virtualenv
    # (scripts/test installs examples/*) must not leak into these exact listings.
    installed = registry.entry_points

    def only_the_test_plugin(**selection):
        return [
            e for e in installed(**selection) if e.dist and e.dist.name == "mailoauth-test-plugin"
        ]

    monkeypatch.setattr(registry, "entry_points", only_the_test_plugin)
    yield
    sys.modules.pop(PLUGIN_MODULE, None)


def make_provider(provider_id: str, name: str = "OAuth2 - Test") -> type[Provider]:
    return type(f"P_{provider_id}", (Provider,), {"id": provider_id, "display_name": name})


def test_builtins_come_first_in_a_fixed_order():
    assert [type(p) for p in registry.all()] == [MicrosoftProvider, GoogleProvider, GenericProvider]
    assert [p.display_name for p in registry.all()] == [
        "OAuth2 - Microsoft",
        "OAuth2 - Google",
        "OAuth2 - Other Provider",
    ]


def test_get_returns_one_cached_instance():
    assert registry.get("google") is registry.get("google")
    assert isinstance(registry.get("microsoft"), MicrosoftProvider)


def test_get_unknown_id_names_the_known_ones():
    with pytest.raises(LookupError, match="known: microsoft, google, generic"):
        registry.get("yahoo")
    with pytest.raises(registry.UnknownProvider):
        registry.get("yahoo")


def test_register_works_as_a_decorator_and_sorts_after_the_builtins():
    zeta, alpha = make_provider("zeta"), make_provider("alpha")
    assert registry.register(zeta) is zeta
    registry.register(alpha)
    assert [p.id for p in registry.all()] == ["microsoft", "google", "generic", "alpha", "zeta"]
    assert isinstance(registry.get("alpha"), alpha)


def test_register_same_class_twice_is_a_no_op():
    cls = make_provider("acme")
    registry.register(cls)
    instance = registry.get("acme")
    registry.register(cls)
    assert registry.get("acme") is instance


def test_register_refuses_another_class_under_a_taken_id():
    with pytest.raises(
        ValueError, match=r"'microsoft' is already registered by .*MicrosoftProvider"
    ):
        registry.register(make_provider("microsoft"))


def test_register_refuses_what_is_not_a_complete_provider():
    with pytest.raises(TypeError, match="not a flask_mailoauth Provider subclass"):
        registry.register(object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty 'id'"):
        registry.register(type("NoId", (Provider,), {"display_name": "x"}))
    with pytest.raises(ValueError, match="non-empty 'display_name'"):
        registry.register(make_provider("acme", name=""))


def install_plugin_distribution(root: Path, entry_points: str) -> None:
    """A real installed distribution: a module, its METADATA and entry_points.txt."""
    (root / f"{PLUGIN_MODULE}.py").write_text(
        textwrap.dedent(
            """
            from flask_mailoauth.providers import ConfigField, Provider

            class AcmeProvider(Provider):
                id = "acme"
                display_name = "OAuth2 - Acme"

            class FakeMicrosoft(Provider):
                id = "microsoft"
                display_name = "OAuth2 - Not Microsoft"

            class Nameless(Provider):
                id = "nameless"

            class BadKind(Provider):
                id = "bad-kind"
                display_name = "OAuth2 - Bad kind"
                fields = (ConfigField("colour", "Colour", kind="colour"),)

            class Twice(Provider):
                id = "twice"
                display_name = "OAuth2 - Twice"
                fields = (ConfigField("tenant", "Tenant"), ConfigField("tenant", "Tenant"))

            class BadName(Provider):
                id = "bad-name"
                display_name = "OAuth2 - Bad name"
                fields = (ConfigField("Client-ID", "Client ID"),)

            class BadDefault(Provider):
                id = "bad-default"
                display_name = "OAuth2 - Bad default"
                fields = (
                    ConfigField(
                        "mode", "Mode", kind="select", default="c", choices=(("a", "A"),)
                    ),
                )

            NOT_A_PROVIDER = object()
            """
        )
    )
    dist_info = root / "mailoauth_test_plugin-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mailoauth-test-plugin\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\n{textwrap.dedent(entry_points)}"
    )


def test_plugins_are_loaded_lazily_from_entry_points(tmp_path, monkeypatch):
    install_plugin_distribution(tmp_path, f"acme = {PLUGIN_MODULE}:AcmeProvider\n")
    monkeypatch.syspath_prepend(tmp_path)
    assert registry.get("acme").display_name == "OAuth2 - Acme"
    assert [p.id for p in registry.all()][-1] == "acme"


def test_broken_plugins_are_logged_and_skipped(tmp_path, monkeypatch, caplog):
    install_plugin_distribution(
        tmp_path,
        f"""
        acme = {PLUGIN_MODULE}:AcmeProvider
        missing = mailoauth_no_such_module:Provider
        not-a-provider = {PLUGIN_MODULE}:NOT_A_PROVIDER
        shadow = {PLUGIN_MODULE}:FakeMicrosoft
        nameless = {PLUGIN_MODULE}:Nameless
        """,
    )
    monkeypatch.syspath_prepend(tmp_path)
    with caplog.at_level(logging.WARNING, logger="flask_mailoauth"):
        assert registry.reload_plugins() == ["acme"]
    skipped = {r.args[0]: r for r in caplog.records if r.name == "flask_mailoauth"}
    assert set(skipped) == {"missing", "not-a-provider", "shadow", "nameless"}
    assert all(r.levelno == logging.WARNING for r in skipped.values())
    assert "mailoauth-test-plugin" in skipped["missing"].getMessage()
    assert "ModuleNotFoundError" in skipped["missing"].getMessage()
    assert "already registered" in skipped["shadow"].getMessage()
    assert isinstance(registry.get("microsoft"), MicrosoftProvider)
    assert [p.id for p in registry.all()] == ["microsoft", "google", "generic", "acme"]


@pytest.mark.parametrize(
    ("cls", "problem"),
    [
        ("BadKind", "field 'colour' has unknown kind 'colour' (known: date, scopes, select, "),
        ("Twice", "field name 'tenant' is declared twice"),
        ("BadName", "field name 'Client-ID' is not lowercase [a-z][a-z0-9_]*"),
        ("BadDefault", "field 'mode' has default 'c', not among its choices"),
    ],
)
def test_invalid_field_declarations_skip_the_plugin_with_one_log_line(
    tmp_path, monkeypatch, caplog, cls, problem
):
    install_plugin_distribution(tmp_path, f"broken = {PLUGIN_MODULE}:{cls}")
    monkeypatch.syspath_prepend(tmp_path)
    with caplog.at_level(logging.WARNING, logger="flask_mailoauth"):
        assert registry.reload_plugins() == []
    [record] = [r for r in caplog.records if r.name == "flask_mailoauth"]
    assert record.levelno == logging.WARNING
    assert problem in record.getMessage()
    assert "'broken'" in record.getMessage()
    assert problem in registry.failed_plugins()["broken"]
    assert "broken" not in {p.id for p in registry.all()}


def test_the_admin_page_says_a_provider_failed_to_load(tmp_path, monkeypatch, host):
    install_plugin_distribution(tmp_path, f"broken = {PLUGIN_MODULE}:Twice")
    monkeypatch.syspath_prepend(tmp_path)
    registry.reload_plugins()
    client = host.app.test_client()
    page = client.get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert "A provider plugin failed to load and is not offered (broken)" in page
    refused = client.get("/mailoauth/support/mailbox?provider=basic").get_data(as_text=True)
    assert "A provider plugin failed to load and is not offered (broken)" in refused


def test_no_failure_no_notice(host):
    page = host.app.test_client().get("/mailoauth/support/mailbox").get_data(as_text=True)
    assert "mailoauth-failed-plugins" not in page


def test_the_builtin_field_declarations_are_valid():
    assert all(not field_problems(p.fields) for p in registry.all())


def test_reload_plugins_forgets_uninstalled_plugins_but_keeps_registered_classes(
    tmp_path, monkeypatch
):
    install_plugin_distribution(tmp_path, f"acme = {PLUGIN_MODULE}:AcmeProvider\n")
    monkeypatch.syspath_prepend(tmp_path)
    registry.register(make_provider("local"))
    assert registry.reload_plugins() == ["acme"]
    sys.path.remove(str(tmp_path))
    assert registry.reload_plugins() == []
    assert [p.id for p in registry.all()] == ["microsoft", "google", "generic", "local"]
