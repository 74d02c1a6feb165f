"""Stage 1 of the pipeline: the method spec (schema, loading, expression language)."""

from scaffold.spec.load import load_spec, parse_spec, spec_from_data
from scaffold.spec.model import Hyperparameter, MethodSpec, Weight


__all__ = ["Hyperparameter", "MethodSpec", "Weight", "load_spec", "parse_spec", "spec_from_data"]
