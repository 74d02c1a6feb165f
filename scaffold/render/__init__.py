"""Rendering, shared by every kind: the jinja2 environment (with `--templates` overrides) and ruff formatting."""

from scaffold.render.files import Layout, header_year, render_files


__all__ = ["Layout", "header_year", "render_files"]
