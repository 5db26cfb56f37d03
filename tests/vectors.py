"""NVIDIA's sample files for nvidia-mig-parted: an external conformance corpus.

The core suite runs on the project's own configs (config/, tests/data/); the
tests that read NVIDIA's files (config-default.yaml, examples-config.yaml, the
hooks samples, ...) check that migmanagerd reads them as mig-parted does. The
files are not part of this repository: ``MIGMANAGERD_VECTORS`` names the
directory holding them; unset, it is ``../shared/vectors/mig-parted`` next to
the checkout. Where the directory does not exist these tests skip, naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV_VECTORS = "MIGMANAGERD_VECTORS"
REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get(ENV_VECTORS) or REPO.parent / "shared" / "vectors" / "mig-parted")
MISSING = f"NVIDIA's mig-parted sample files not found at {VECTORS} (set {ENV_VECTORS} to their directory)"

needs_vectors = pytest.mark.skipif(not VECTORS.is_dir(), reason=MISSING)


def require_vectors() -> Path:
    """The corpus directory; skips the calling test when it is missing."""
    if not VECTORS.is_dir():
        pytest.skip(MISSING)
    return VECTORS
