"""The console tests share console_testlib (Linux's driver, replayed; a controllable chardev)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
