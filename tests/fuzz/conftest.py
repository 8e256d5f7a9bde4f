"""Fuzz tests: keep Hypothesis' files out of the working tree.

Every fuzz test runs with ``database=None`` (see ``tests.support.fuzz.fuzz_settings``), but Hypothesis also
caches the constants it mines from our source and its Unicode tables under ``./.hypothesis``; point that
storage at the temporary directory instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cellgate-hypothesis")
