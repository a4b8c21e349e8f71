"""Project-wide pytest setup: hypothesis profiles and the pytester fixture.

Profiles: ``ci`` (default when CI is set), ``dev`` (default otherwise), ``nightly`` (1000
examples). Pick one with ``--hypothesis-profile NAME`` or ``HYPOTHESIS_PROFILE``.
The harness's own pytest plugin (harness.pytest_plugin) is registered by the package's
``pytest11`` entry point.
"""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=40, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=25, print_blob=True, **_common)
settings.register_profile("nightly", max_examples=1000, print_blob=True, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
