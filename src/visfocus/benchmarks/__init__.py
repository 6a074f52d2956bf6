"""Benchmarks as tasks: VSR, WhatsUp, POPE and a generated spatial task, registered by name."""

from visfocus.benchmarks import pope, scenes, synthetic, vsr, whatsup  # noqa: F401  (registration)
from visfocus.benchmarks.base import TASKS, Record, Task, register_task, task, tasks

__all__ = ["TASKS", "Record", "Task", "register_task", "task", "tasks"]
