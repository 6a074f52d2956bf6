"""What one evaluation run is and owns: its configuration, declared once (``config``); its folder (``folder``) with the
lock (``lock``), the identity a resume must match (``identity``), the sample files (``samples``), ``results.json``
(``results``) and rank 0's progress bar (``progress``); the records it answers (``records``). The runner that drives
them is ``visfocus.evaluate``."""
