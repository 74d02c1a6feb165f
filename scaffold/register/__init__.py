"""The editing library the registry sites are built from: PEFT tree detection (`tree`), libcst transforms with
their inverses (`transforms`, `_cst`), statement location for partial parsing (`locate`), and line edits of the
docs' YAML toctree (`toctree`). The sites themselves belong to the kinds (`scaffold/kinds/<kind>/`), the loop that
runs them to the core (`scaffold.core.sites`)."""
