"""Interventions, one file each, listed in ``METHODS`` by ``@register_method``. A method receives a ``Batch``.

Every module of this package is imported here, so a new method is one new file. Methods kept outside the package
(your own) register the same way: name their modules in the environment variable ``VISFOCUS_METHODS`` (comma
separated, importable from ``sys.path``), and visfocus imports them when it starts — only those you name. A module
that fails to import is named, with its error, in the error for an unknown method."""

import importlib
import os
import pkgutil

from visfocus.interventions.base import (
    METHODS,
    UNAVAILABLE,
    Fidelity,
    Method,
    MethodResult,
    method,
    methods,
    parse_method_args,
    typed_method_args,
)
from visfocus.interventions.batch import Batch

SHARED_MODULES = {"base", "batch", "decoding", "params", "variants"}  # the contract and shared pieces, not methods
EXTRA_METHODS_VARIABLE = "VISFOCUS_METHODS"


def _import_methods() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in SHARED_MODULES:
            importlib.import_module(f"{__name__}.{info.name}")
    for name in filter(None, (n.strip() for n in os.environ.get(EXTRA_METHODS_VARIABLE, "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as err:  # a user's module: its failure is told where its method is asked for
            UNAVAILABLE[name] = f"{type(err).__name__}: {err}"


_import_methods()

__all__ = ["METHODS", "Batch", "Fidelity", "Method", "MethodResult", "method", "methods", "parse_method_args",
           "typed_method_args"]
