"""Where the built-in recipes are: `recipes/<name>.yaml`, shipped inside the package.

The files live in the repository's top-level `recipes/` folder; `compressor/recipes` links to it, so a source
checkout (editable install) and an installed wheel (where setuptools copied the files into `compressor/recipes/`)
find them at the same place inside the package, through importlib.resources.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: the folder of the built-in recipes (the repository's `recipes/` in a source checkout: the link is resolved)
RECIPES_DIR = Path(str(resources.files("compressor") / "recipes")).resolve()
