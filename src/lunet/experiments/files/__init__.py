"""Safe file input and output: safe.py (reads, atomic writes and removals through no link or FIFO),
lock.py (the lock of a folder a training writes in), loads.py (weights-only loads of PyTorch files)."""
