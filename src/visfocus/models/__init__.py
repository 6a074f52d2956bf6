"""Loading VLMs and the per-family adapters (registered in ``ADAPTERS`` by model type).

Every module of this package that is not one of the shared pieces below is a family file and is imported here, so
a new family is one new file (its ``@register_adapter`` class)."""

import importlib
import pkgutil

from visfocus.models.base import ADAPTERS, Adapter, adapter_for, register_adapter

# the contract and the pieces families share, not families themselves
SHARED_MODULES = {"base", "catalog", "layout", "loading", "processor", "tiles"}


def _import_families() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name not in SHARED_MODULES:
            importlib.import_module(f"{__name__}.{info.name}")


_import_families()

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "register_adapter"]
