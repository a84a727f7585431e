"""A model's Markdown as HTML the owner's browser may show: rendered on the box, then sanitized.

Model output is untrusted text (a prompt can make a model write anything), so it passes three gates:
markdown-it renders CommonMark with raw HTML turned off (tags come out escaped) and refuses
javascript:, vbscript:, file: and data: links; nh3 (Rust's ammonia) then keeps only the tags and
attributes below, so a renderer bug cannot smuggle in a script, a handler or a style; and the pages'
Content-Security-Policy forbids inline scripts.  Images are not kept: an image from anywhere but the
box would tell a third party that the owner read this reply.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

TAGS = {"p", "br", "hr", "em", "strong", "s", "del", "code", "pre", "blockquote", "ul", "ol", "li",
        "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td"}
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
SCHEMES = {"http", "https", "mailto"}

_renderer = MarkdownIt("js-default")  # CommonMark with tables and strikethrough; html=False, no linkify


def render(text: str) -> str:
    return nh3.clean(_renderer.render(text), tags=TAGS, attributes=ATTRIBUTES, url_schemes=SCHEMES,
                     link_rel="noopener noreferrer nofollow")
