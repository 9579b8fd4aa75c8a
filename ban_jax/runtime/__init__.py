"""Runtime: what a run needs besides the learning itself (devices, files, signals)."""
