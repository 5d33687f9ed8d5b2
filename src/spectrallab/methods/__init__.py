"""One file per method (or small family). Importing this package registers them all.

To add a method: write ``methods/<name>.py`` with a :class:`~.base.Method` subclass decorated by
``@register("<name>")`` and import it below. ``apply``, ``optimizer``, ``merge``, ``spectrum``,
the training loop and the widgets then know it with no other change.
"""

from . import full, lora  # noqa: F401  (registration happens on import)
from .base import AdaptedLinear, Method, register, registered

__all__ = ["AdaptedLinear", "Method", "register", "registered"]
