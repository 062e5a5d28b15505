"""Test setup: 8 fake CPU devices, so partition specs and multi-device steps are checked on CPU.

Must run before JAX initialises its backends (pytest imports conftest first).
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)
