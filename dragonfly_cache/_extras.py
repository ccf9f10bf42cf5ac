"""Optional dependencies: import one, or fail with the line that installs its extra.

``pip install dragonfly-cache`` brings only what the core needs (redis, hiredis,
cachetools). Everything else comes with an extra (see pyproject.toml), and every module or
call that needs one starts with :func:`require`, so a missing extra fails with the install
line instead of a bare ``No module named 'flask'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .exceptions import MissingExtraError

__all__ = ["install_line", "require"]


def install_line(extra: str) -> str:
    """The shell line that installs ``extra``, e.g. ``pip install 'dragonfly-cache[flask]'``."""
    return f"pip install 'dragonfly-cache[{extra}]'"


def require(module: str, extra: str, needed_by: str) -> ModuleType:
    """Import and return ``module``, which the ``extra`` extra installs.

    Args:
        module: the importable name, e.g. ``"flask"`` or ``"prometheus_client"``.
        extra: the extra that brings it, e.g. ``"flask"``.
        needed_by: what needs it, for the message: a module name (``__name__``), a method
            or a command.

    Returns:
        The imported module.

    Raises:
        MissingExtraError: ``module`` is not installed; the message names ``needed_by``,
            ``module`` and the install line.
        ImportError: ``module`` is installed but its own import failed (e.g. one of *its*
            dependencies is missing): that error, unchanged, since the extra is not the fix.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module == exc.name or module.startswith(f"{exc.name}.")):
            raise
        raise MissingExtraError(
            f"{needed_by} needs the {module} package: {install_line(extra)}", name=module
        ) from None
