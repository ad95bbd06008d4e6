"""Errors a user can cause and fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

__all__ = ["BadImageError", "DataError", "ImgclfError", "BundleError", "OutputError", "UsageError"]


class ImgclfError(Exception):
    """Base class of every error caused by user input (a path, an argument, a file)."""


class UsageError(ImgclfError):
    """An argument or option value that cannot work (unknown model, bad number...)."""


class DataError(ImgclfError):
    """The DATA argument cannot be turned into a dataset (missing, empty, one class...)."""


class BadImageError(ImgclfError):
    """One image file cannot be used. The message names the file and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class OutputError(ImgclfError):
    """A place imgclf was asked to write that cannot take the file (no such folder, /proc...)."""


class BundleError(ImgclfError):
    """A model bundle directory that is missing, incomplete or not readable."""
