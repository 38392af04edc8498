"""``.. provider-errors:: microsoft``: the provider's error table, straight from the code.

The troubleshooting page renders each provider's ``error_advice`` mapping, so the guidance the docs
print is the guidance the Token tab and the banners show.
"""

from __future__ import annotations

from docutils import nodes
from docutils.parsers.rst import Directive

KINDS = {
    "transient": "retried automatically",
    "reauthorize": "authorize again",
    "configuration": "fix the IdP Config",
}


class ProviderErrors(Directive):
    """A three-column table: code, what happens, what to do."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from flask_mailoauth.providers import registry

        advice_table = registry.get(self.arguments[0]).error_advice
        table = nodes.table()
        group = nodes.tgroup(cols=3)
        table += group
        for width in (22, 18, 60):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        head += _row("Code", "Effect", "What to do")
        group += head
        body = nodes.tbody()
        for code, advice in advice_table.items():
            body += _row(code, KINDS[advice.kind], advice.guidance)
        group += body
        return [table]


def _row(*cells: str) -> nodes.row:
    row = nodes.row()
    for text in cells:
        entry = nodes.entry()
        entry += nodes.paragraph(text=text)
        row += entry
    return row


def setup(app):
    app.add_directive("provider-errors", ProviderErrors)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
