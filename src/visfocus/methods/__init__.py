"""Interventions, one file each, listed in ``METHODS`` by ``@register_method``."""

from visfocus.methods import adaptvis, baseline, clvs, dola, scaling_vis, vcd, vea  # noqa: F401  (registration)
from visfocus.methods.base import METHODS, Method, MethodResult, method, methods, parse_method_args

__all__ = ["METHODS", "Method", "MethodResult", "method", "methods", "parse_method_args"]
