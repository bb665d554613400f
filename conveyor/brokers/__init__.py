"""Message brokers: the seam in base.py, one module per store."""
