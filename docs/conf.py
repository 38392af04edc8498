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
nitpicky = False
