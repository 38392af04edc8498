"""Sphinx configuration for the flask-mailoauth documentation."""

import sys
from pathlib import Path

import flask_mailoauth

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "flask-mailoauth"
copyright = "2026, the flask-mailoauth authors"
release = flask_mailoauth.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "errortables",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
intersphinx_mapping = {}
html_theme = "alabaster"
exclude_patterns = ["_build"]
# A dangling cross-reference fails the -W build. Ignored: names of the standard library and of
# third-party packages that type hints mention (no intersphinx, to build offline).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(collections\.abc|datetime|ipaddress|ssl|smtplib|poplib|imaplib)(\..*)?"),
    (r"py:.*", r"(flask|flask_sqlalchemy|requests|alembic)(\..*)?"),
    (r"py:class", r"Flask|SQLAlchemy|AutogenContext"),
]
