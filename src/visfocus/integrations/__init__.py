"""visfocus inside other evaluation frameworks, through the public API and traces only (``lmms``: lmms-eval)."""
