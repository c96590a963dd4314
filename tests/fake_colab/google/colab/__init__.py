"""A stand-in for Colab's ``google.colab`` (see ../../README.md): tests run the notebook as Colab
would, with Drive, uploads, downloads and secrets played by local folders and env vars."""

from . import drive, files, userdata

__all__ = ["drive", "files", "userdata"]
