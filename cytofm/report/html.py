"""The report page: one self-contained folder, ``index.html`` linking tables and figures.

Images are referenced relative to the page, so the folder can be copied or zipped as is. A small
script records on the page whether every image loaded (``data-images``/``data-broken-images``
on ``<html>``), which the report test reads back from a headless browser.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Figure", "Section", "render_page"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table.results{border-collapse:collapse;font-size:.85em;margin:.6em 0}
table.results th,table.results td{border:1px solid #ddd;padding:.3em .6em;text-align:left}
table.results td.best{font-weight:bold;background:#eef6ee}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.8em;color:#555}
.gallery figure{max-width:300px}.meta{font-size:.8em;color:#666}nav a{margin-right:1em}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.documentElement.setAttribute('data-images', String(imgs.length));
  document.documentElement.setAttribute('data-broken-images', String(broken.length));
});
"""


@dataclass
class Figure:
    path: str  # relative to the page
    caption: str


@dataclass
class Section:
    anchor: str
    title: str
    intro: str = ""
    tables_html: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (href, text)
    figures: list[Figure] = field(default_factory=list)
    thumbs: list[Figure] = field(default_factory=list)  # small pictures (slides), in a gallery


def _section(s: Section) -> str:
    parts = [f'<h2 id="{html.escape(s.anchor)}">{html.escape(s.title)}</h2>']
    if s.intro:
        parts.append(f"<p>{s.intro}</p>")
    parts += s.tables_html
    if s.links:
        items = " · ".join(f'<a href="{html.escape(h)}">{html.escape(t)}</a>' for h, t in s.links)
        parts.append(f'<p class="meta">{items}</p>')
    for kind, figures in (("figures", s.figures), ("gallery", s.thumbs)):
        if figures:
            parts.append(f'<div class="{kind}">{"".join(_figure(f) for f in figures)}</div>')
    return "\n".join(parts)


def _figure(f: Figure) -> str:
    path, caption = html.escape(f.path), html.escape(f.caption)
    return (
        f'<figure><a href="{path}"><img src="{path}" alt="{caption}"></a>'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def render_page(title: str, meta: dict[str, str], sections: list[Section], out: Path) -> Path:
    nav = " ".join(
        f'<a href="#{html.escape(s.anchor)}">{html.escape(s.title)}</a>' for s in sections
    )
    meta_html = " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in meta.items())
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f"<script>{_SCRIPT}</script></head><body>"
        f'<h1>{html.escape(title)}</h1><p class="meta">{meta_html}</p><nav>{nav}</nav>'
        + "\n".join(_section(s) for s in sections)
        + "</body></html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
