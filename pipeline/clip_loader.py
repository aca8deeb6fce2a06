"""Import clip-anytorch quietly (it imports the deprecated pkg_resources, hence the setuptools<81 pin)."""

from __future__ import annotations

import warnings
from types import ModuleType


def import_clip() -> ModuleType:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        import clip

    return clip
