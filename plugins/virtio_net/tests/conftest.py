"""The virtio-net tests share virtio_net_testlib (the driver side and a socketpair tap)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
