"""One converter file per method shared with HF peft; each ends with ``register_converter(...)``.

Importing this package imports every module in it, so adding a method is adding a file.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
