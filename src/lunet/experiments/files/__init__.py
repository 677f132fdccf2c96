"""Safe file input and output: safe.py (reads, appends and removals through no link or FIFO),
atomic.py (atomic writes, signals held meanwhile), lock.py (the lock of a folder a training writes
in), loads.py (weights-only loads of PyTorch files)."""
