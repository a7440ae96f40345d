"""Markdown from vendors rendered to HTML that is safe to put on the product page.

markdown-it renders CommonMark with raw HTML disabled; nh3 then cleans the result, so
neither a vendor's HTML nor a ``javascript:`` link reaches a customer's browser.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

_renderer = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render(text: str) -> str:
    return nh3.clean(_renderer.render(text or ""), link_rel="noopener noreferrer nofollow")
