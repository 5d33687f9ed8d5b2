"""One file per method (or small family). Importing this package registers them all.

To add a method: write ``methods/<name>.py`` with a :class:`~.base.Method` subclass decorated by
``@register("<name>")`` and import it below. ``apply``, ``optimizer``, ``merge``, ``spectrum``,
the training loop and the widgets then know it with no other change.

The package is also the public function ``spectrallab.methods()`` (the registered names): making
the package itself callable keeps ``import spectrallab.methods.lora`` working, which a plain
function of the same name would shadow.
"""

import sys
import types

from . import full, lora  # noqa: F401  (registration happens on import)
from .base import AdaptedLinear, Method, register, registered


class _CallablePackage(types.ModuleType):
    def __call__(self) -> list[str]:
        """Names of all registered methods, sorted."""
        return sorted(registered())


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["AdaptedLinear", "Method", "register", "registered"]
