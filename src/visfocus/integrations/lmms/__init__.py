"""visfocus as an lmms-eval model (``--model visfocus``) and our tasks as lmms-eval tasks.

``manifest`` is what lmms-eval's entry point ``lmms_eval.models`` reads; ``model`` the model class; ``settings`` turns
``--model_args`` into a model to load and a method to run (pure, no lmms-eval needed); ``tasks`` backs the YAML task
files in ``task_files/`` (``visfocus lmms-tasks-path`` prints that folder for ``--include_path``)."""

from pathlib import Path

TASK_FILES = Path(__file__).parent / "task_files"
