"""The example provider plugin (examples/mailoauth-provider-zoho) as the demo helpdesk sees it.

The test command installs every ``examples/*/`` package into the virtualenv; its entry point
must put Zoho Mail in the helpdesk's Authentication selects without any code in the host.
"""

from __future__ import annotations

import re

import pytest

from example_app import create_app

from .conftest import TEST_KEY

CSRF = re.compile(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"')


@pytest.fixture
def admin(tmp_path):
    helpdesk = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/helpdesk.db",
            "MAILOAUTH_ENCRYPTION_KEYS": [TEST_KEY],
        }
    )
    client = helpdesk.test_client()
    token = CSRF.search(client.get("/login").get_data(as_text=True)).group(1)
    response = client.post(
        "/login",
        data={"email": "admin@example.test", "password": "admin", "csrf_token": token},
    )
    assert response.status_code == 303
    return client


def options(page: str, select_id: str) -> list[str]:
    select = re.search(rf'<select id="{select_id}".*?</select>', page, re.S).group(0)
    return re.findall(r"<option[^>]*>([^<]*)</option>", select)


def test_the_zoho_plugin_is_offered_in_the_authentication_selects(admin):
    response = admin.get("/admin/emails/1?tab=remote")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    remote = options(page, "remote-auth")
    assert "OAuth2 - Zoho Mail" in remote
    # after the built-ins, before the legacy choice
    assert remote.index("OAuth2 - Zoho Mail") > remote.index("OAuth2 - Other Provider")
    assert remote[-1] == "Basic Authentication (Legacy)"
    assert "OAuth2 - Zoho Mail" in options(page, "smtp-auth")
    assert re.search(r'<option value="zoho">OAuth2 - Zoho Mail</option>', page)
