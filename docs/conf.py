"""Sphinx configuration for the Flask-QStash documentation."""

from __future__ import annotations

import importlib.metadata

project = "Flask-QStash"
copyright = "2026, Flask-QStash contributors"
author = "Flask-QStash contributors"
release = importlib.metadata.version("Flask-QStash")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.extlinks",
    "pallets_sphinx_themes",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
extlinks = {
    "issue": ("https://github.com/flask-qstash/flask-qstash/issues/%s", "#%s"),
    "pr": ("https://github.com/flask-qstash/flask-qstash/pull/%s", "#%s"),
}
html_theme = "pocoo"
html_title = f"Flask-QStash Documentation ({version})"
html_show_sourcelink = False
exclude_patterns = ["_build"]
