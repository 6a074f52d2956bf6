"""The one exception type users see: a message that says what happened and what to do (one line in the CLI)."""


class VisfocusError(ValueError):
    """Bad input or an unsupported setting; the message is complete on its own."""
