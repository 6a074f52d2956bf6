"""Interventions, one file each, listed in ``METHODS`` by ``@register_method``. A method receives a ``Batch``."""

# noqa below: imported for registration
from visfocus.interventions import adaptvis, baseline, clvs, deco, dola, m3id, pai, scaling_vis, vaf, vcd, vea  # noqa: F401
from visfocus.interventions.base import (
    METHODS,
    Method,
    MethodResult,
    method,
    methods,
    parse_method_args,
    typed_method_args,
)
from visfocus.interventions.batch import Batch

__all__ = ["METHODS", "Batch", "Method", "MethodResult", "method", "methods", "parse_method_args",
           "typed_method_args"]
