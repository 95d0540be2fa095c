"""``farm.signing`` as the docs print it; the code lives in ``farm.executor.signing``."""

from farm.executor.signing import KeyFileError, SignatureError, ensure_key, load_key

__all__ = ["KeyFileError", "SignatureError", "ensure_key", "load_key"]
