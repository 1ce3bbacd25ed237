"""Shared pytest setup: hypothesis profiles and CPU thread settings.

Profiles (pick one with the environment variable ``HYPOTHESIS_PROFILE``):

* ``dev`` (default when unset): 20 examples per property, quick local runs;
* ``ci`` (``make test``): 200 examples, derandomized so CI is reproducible,
  failing examples printed with a ``@reproduce_failure`` blob;
* ``long`` (``make test-long``): 2000 examples, randomized, to hunt for rare cases.

No profile has a deadline: one example builds and runs a whole supernet, whose
time varies with its size and with the load of the (shared) machine.
"""

from __future__ import annotations

import os
import sys

import torch
from hypothesis import HealthCheck, settings

# `from strategies import supernets` in test modules (tests/ is not a package).
sys.path.insert(0, os.path.dirname(__file__))

# Tiny tensors: one intra-op thread avoids thread start-up and contention on a
# shared 2-core machine. It only changes which thread runs a kernel; the
# reference and the rewritten model always run under the same setting.
torch.set_num_threads(1)

_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

settings.register_profile("dev", max_examples=20, deadline=None, print_blob=True, suppress_health_check=_SLOW_DATA)
settings.register_profile(
    "ci", max_examples=200, deadline=None, derandomize=True, print_blob=True, suppress_health_check=_SLOW_DATA
)
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True, suppress_health_check=_SLOW_DATA)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
