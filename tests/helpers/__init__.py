"""Code the tests share: servers and peers to talk to, a worker in a thread, a real `farm up`,
the one waiting helper, and job functions that tests run inside real worker processes.

Test modules import from here (never from each other), and conftest.py builds its
fixtures from here.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
