"""PEFT methods, one file each, in folders named after the survey's families.

A file whose name starts with an underscore holds one method's helpers (its layers, its init, its encoder),
not a method; ``shared/`` holds the plumbing several families use.

Importing this package imports every method module; each ends with one ``register(...)``.
"""

import importlib
import pkgutil


def _import_all() -> None:
    for info in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
        importlib.import_module(info.name)


_import_all()
