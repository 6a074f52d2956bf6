"""Overhead of visfocus' attention edits and traces against plain SDPA and eager attention (see visfocus.overhead).

    python benchmarks/overhead.py            # full 2B architecture, fp32 and bf16, plus the 4k-token memory test
    python benchmarks/overhead.py --layers 4 --reps 3 --long_tokens 1024
"""

import os
import sys

if __name__ == "__main__":
    # Large CPU allocations map and unmap pages directly, so sampled RSS shows each run's own peak.
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    from visfocus.overhead import main

    sys.exit(main())
