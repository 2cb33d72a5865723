"""Hypothesis profiles for the unit tests.

On a developer machine Hypothesis draws new random examples on every run and keeps the failing
ones in .hypothesis/, so the property and state-machine tests go on finding bugs. In CI (the
environment variable CI set, as CI services do) the "ci" profile makes each run repeat the
same examples. A CI run is then reproducible and cannot fail on a new random discovery, and it
neither reads nor writes an example database. The test settings keep their own example counts.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# Loaded at import, before pytest imports the test modules, because a settings object takes
# its unset values from the profile in force when it is created.
if _in_ci():
    settings.load_profile("ci")
