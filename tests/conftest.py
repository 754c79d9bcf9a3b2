"""Test helpers shared across folders (``tests/photos.py``) are importable by name, and the suite never
reads or writes the user's cache folder (calibrated profiles, calibration suites): it gets its own."""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="edgeprune-test-cache-")
