"""farm's version: written here once; pyproject.toml, ``farm --version``, the admin
``version`` command and ``farm.__version__`` all read it."""

__version__ = "0.1.0"
