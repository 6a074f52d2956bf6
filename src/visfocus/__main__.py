"""``python -m visfocus ...`` (and ``torchrun -m visfocus ...``, ``accelerate launch -m visfocus ...``) is the CLI."""

import sys

from visfocus.cli import main

if __name__ == "__main__":
    sys.exit(main())
