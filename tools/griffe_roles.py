"""A griffe extension for the docs site: Sphinx roles in docstrings become code spans.

fasb_lens' docstrings name other objects the Sphinx way (``:func:`save_figure```); Markdown
would show the role itself. This rewrites each role to a plain code span, so the API pages
read ``save_figure`` without turning the names into links that could fail to resolve.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):`~?([^`]+)`")


def without_roles(text: str) -> str:
    """``text`` with every ``:role:`name``` written as a code span."""
    return ROLE.sub(lambda match: f"`{match.group(1)}`", text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = without_roles(obj.docstring.value)
