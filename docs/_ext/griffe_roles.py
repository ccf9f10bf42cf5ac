"""A griffe extension for the API reference: Sphinx roles in docstrings become code spans.

The package's docstrings use Google sections (rendered by mkdocstrings) and, here and
there, Sphinx cross-reference roles (:class:`~dragonfly_cache.TieredCache`), which
Markdown would print literally. This turns each role into an inline code span of its
target (the last dotted part when the target starts with ``~``, as Sphinx shows it), and
a trailing ``::`` (reST's literal-block marker) into ``:``. The package's source is
untouched. Loaded by mkdocs.yml (plugins > mkdocstrings > python > options > extensions).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|exc|data|obj):`(~?)([^`]+)`")
_LITERAL_MARKER = re.compile(r"(?<=\w)::$", flags=re.MULTILINE)


def _code_span(match: re.Match[str]) -> str:
    short, target = match[1], match[2]
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def convert(text: str) -> str:
    """The docstring ``text`` with Sphinx roles and ``::`` markers made Markdown."""
    return _LITERAL_MARKER.sub(":", _ROLE.sub(_code_span, text))


class SphinxRoles(griffe.Extension):
    """Rewrite each docstring once, when griffe creates its object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
