"""Loading VLMs and the per-family adapters (registered in ``ADAPTERS`` by model type)."""

from visfocus.models import llava, qwen  # noqa: F401  (registration)
from visfocus.models.base import ADAPTERS, Adapter, adapter_for, register_adapter

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "register_adapter"]
