"""farm's version: written here once; pyproject.toml, ``farm --version``, the admin
``version`` command and ``farm.__version__`` all read it.

The release's date, year.month.day (PEP 440 reads it as a version above 0.1.0, which every
farm said before it): docs/operations.md's Upgrading notes are keyed by date
("since 6 December 2026"), and an operator reads from ``farm --version`` which of them apply.
A change the notes list moves it to the day of the change (tests/unit/test_operations_docs.py
holds the notes' newest date to it)."""

__version__ = "2026.12.6"
