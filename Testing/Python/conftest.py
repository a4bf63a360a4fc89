"""Shared test set-up. OpenMP threads that spin while waiting make torch on a small, shared CPU
(CI's 2 cores) an order of magnitude slower; passive waiting must be chosen before torch loads."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
