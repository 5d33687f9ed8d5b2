"""One file per method (or small family). Importing this package registers them all.

To add a method: write ``methods/<name>.py`` with a :class:`~.base.Method` subclass decorated by
``@register("<name>")``. Every module in this package is imported (and so registered) when the
package loads; ``apply``, ``optimizer``, ``merge``, ``spectrum``, the training loop and the widgets
then know the method with no other change.

The package is also the public function ``spectrallab.methods()`` (the registered names): making
the package itself callable keeps ``import spectrallab.methods.lora`` working, which a plain
function of the same name would shadow.
"""

import importlib
import pkgutil
import sys
import types

from .base import AdaptedLinear, Method, register, registered

# Registration happens on import: import every method module, in a fixed (alphabetical) order.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")


class _CallablePackage(types.ModuleType):
    def __call__(self) -> list[str]:
        """Names of all registered methods, sorted."""
        return sorted(registered())


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["AdaptedLinear", "Method", "register", "registered"]
