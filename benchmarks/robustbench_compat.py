"""Import RobustBench 1.1.1 next to pyautoattack 0.2.0.

RobustBench's evaluation module does ``import autoattack`` (and ``from autoattack.state import ...``), but the PyPI
package it depends on, pyautoattack, installs the module as ``pyautoattack``. Registering pyautoattack under the old
name before the first RobustBench import is enough; nothing else of RobustBench's evaluation code is used here (its
``benchmark()`` does not match pyautoattack 0.2.0's API: we call ``pyautoattack.AutoAttack`` ourselves).
"""

import importlib
import sys
import warnings


def import_robustbench():
    """Return the ``robustbench`` module, importable although pyautoattack renamed ``autoattack``."""
    if "autoattack" not in sys.modules:
        import pyautoattack
        import pyautoattack.state

        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = pyautoattack.state
    with warnings.catch_warnings():
        # robustbench imports pkg_resources (deprecated), torch.jit.interface and timm.models.helpers: none is ours.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)  # timm, imported by robustbench
        robustbench = importlib.import_module("robustbench")
        importlib.import_module("robustbench.data")
        importlib.import_module("robustbench.utils")
    return robustbench
