"""Stage 3 of the pipeline: render a plan through the jinja2 templates and format the result with ruff."""

from scaffold.render.files import GeneratedFiles, Layout, render_method


__all__ = ["GeneratedFiles", "Layout", "render_method"]
