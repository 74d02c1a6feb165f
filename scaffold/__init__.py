"""peft-scaffold: turn a short method spec into a PEFT tuner and register it.

The package is laid out as the pipeline it runs: `spec` (parse and validate the YAML) -> `plan` (everything
the templates need, decided once) -> `render` (jinja2 + ruff) -> `register` (libcst edits to a PEFT tree) ->
`verify` (run what was generated).
"""

__version__ = "0.1.0"
