"""Stage 2 of the pipeline: from a validated spec to a plan the templates render without further logic."""

from scaffold.plan.method import MethodPlan, build_plan


__all__ = ["MethodPlan", "build_plan"]
