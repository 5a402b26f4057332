"""The command line: a thin layer over the Python API that maps its errors to flags."""

from .main import main

__all__ = ["main"]
