"""Result backends: the seam in base.py, one module per store."""
