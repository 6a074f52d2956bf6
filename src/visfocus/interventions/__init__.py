"""Interventions, one file each, listed in ``METHODS`` by ``@register_method``. A method receives a ``Batch``."""

from visfocus.interventions import adaptvis, baseline, clvs, dola, scaling_vis, vcd, vea  # noqa: F401  (registration)
from visfocus.interventions.base import METHODS, Method, MethodResult, method, methods, parse_method_args
from visfocus.interventions.batch import Batch

__all__ = ["METHODS", "Batch", "Method", "MethodResult", "method", "methods", "parse_method_args"]
