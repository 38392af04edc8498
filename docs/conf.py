"""Sphinx configuration for the flask-mailoauth documentation."""

import flask_mailoauth

project = "flask-mailoauth"
copyright = "2026, the flask-mailoauth authors"
release = flask_mailoauth.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
intersphinx_mapping = {}
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = False
