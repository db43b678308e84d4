"""MkDocs hooks: the reference pages are made from the code at build time (lth.reference), so the
site cannot describe a parser, a config key or a preset that no longer exists. A page asks for a
generated body with the marker `<!-- lth-reference:NAME -->`."""

from __future__ import annotations

from typing import Any

from lth import reference


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    for name in reference.PAGES:
        marker = reference.MARKER.format(name)
        if marker in markdown:
            markdown = markdown.replace(marker, reference.page(name))
    return markdown
