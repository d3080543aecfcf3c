"""A report as a list of blocks, rendered twice: Markdown (``report.md``, images linked) and one
self-contained HTML page (``report.html``: inline CSS, images base64-embedded, no script, no
network; every text escaped)."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence


@dataclass
class Block:
    kind: str  # "h2" | "h3" | "p" | "note" | "table" | "image" | "code" | "kv"
    text: str = ""
    headers: Sequence[str] = ()
    rows: Sequence[Sequence[Any]] = ()
    path: Optional[Path] = None
    meta: dict[str, Any] = field(default_factory=dict)


def h2(text: str, anchor: str = "") -> Block:
    return Block("h2", text, meta={"anchor": anchor})


def h3(text: str) -> Block:
    return Block("h3", text)


def p(text: str) -> Block:
    return Block("p", text)


def note(text: str) -> Block:
    return Block("note", text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "", compact: bool = False) -> Block:
    """``compact``: a small table that may sit beside the next compact one in the HTML."""
    return Block("table", caption, headers=list(headers), rows=[list(r) for r in rows], meta={"compact": compact})


def image(path: Path, alt: str) -> Block:
    return Block("image", alt, path=Path(path))


def code(text: str) -> Block:
    return Block("code", text)


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "–"
        if v == int(v) and abs(v) < 1e15:
            return f"{int(v)}" if abs(v) >= 1 or v == 0 else f"{v:g}"
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.1f}"
    return str(v)


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ------------------------------------------------------------------------------------ Markdown


def _md_cell(v: Any) -> str:
    return fmt(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: Sequence[Block], base: Path) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h2":
            out += [f"## {b.text}", ""]
        elif b.kind == "h3":
            out += [f"### {b.text}", ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "note":
            out += [f"> {b.text}", ""]
        elif b.kind == "code":
            out += ["```", b.text, "```", ""]
        elif b.kind == "table":
            if b.text:
                out += [f"*{b.text}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            out.append("|" + "|".join("---:" if b.rows and _numeric(b.rows[0][i]) else "---"
                                      for i in range(len(b.headers))) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif b.kind == "image" and b.path is not None:
            out += [f"![{b.text}]({os.path.relpath(b.path, base)})", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d232b;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px;background:#fff;min-height:100vh;box-shadow:0 0 8px rgba(0,0,0,.06)}
h1{font-size:1.6em;margin:.2em 0 .1em}
.sub{color:#5a6470;margin:0 0 1em}
nav{font-size:.9em;margin:.6em 0 1.4em;padding:.5em .8em;background:#f0f3f7;border-radius:6px}
nav a{margin-right:1em;color:#2b5797;text-decoration:none;white-space:nowrap}
h2{font-size:1.25em;border-bottom:2px solid #e3e7ec;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em;color:#33414f}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.88em}
table.compact{display:inline-table;vertical-align:top;margin-right:22px}
caption{caption-side:top;text-align:left;color:#5a6470;font-style:italic;padding-bottom:.3em}
th,td{border:1px solid #dde2e8;padding:3px 8px;vertical-align:top}
th{background:#f0f3f7;text-align:left;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.6em 0;font-size:.92em}
pre{background:#f4f6f8;padding:.6em .8em;overflow-x:auto;font-size:.85em;border-radius:4px;white-space:pre-wrap;word-break:break-all}
figure{margin:.6em 0 1.2em}
figure img{max-width:100%;border:1px solid #e3e7ec;border-radius:4px}
figcaption{font-size:.85em;color:#5a6470}
"""


def _img_src(path: Path) -> Optional[str]:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def to_html(title: str, subtitle: str, blocks: Sequence[Block]) -> str:
    e = html.escape
    nav = [f'<a href="#{e(b.meta["anchor"])}">{e(b.text)}</a>' for b in blocks if b.kind == "h2" and b.meta.get("anchor")]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body><main>",
           f"<h1>{e(title)}</h1>", f'<p class="sub">{e(subtitle)}</p>']
    if nav:
        out.append("<nav>" + "".join(nav) + "</nav>")
    for b in blocks:
        if b.kind == "h2":
            anchor = f' id="{e(b.meta["anchor"])}"' if b.meta.get("anchor") else ""
            out.append(f"<h2{anchor}>{e(b.text)}</h2>")
        elif b.kind == "h3":
            out.append(f"<h3>{e(b.text)}</h3>")
        elif b.kind == "p":
            out.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "note":
            out.append(f'<div class="note">{e(b.text)}</div>')
        elif b.kind == "code":
            out.append(f"<pre>{e(b.text)}</pre>")
        elif b.kind == "table":
            rows = ['<table class="compact">' if b.meta.get("compact") else "<table>"]
            if b.text:
                rows.append(f"<caption>{e(b.text)}</caption>")
            rows.append("<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b.headers) + "</tr>")
            for row in b.rows:
                rows.append("<tr>" + "".join(
                    f'<td class="num">{e(fmt(c))}</td>' if _numeric(c) else f"<td>{e(fmt(c))}</td>" for c in row) + "</tr>")
            rows.append("</table>")
            out.append("".join(rows))
        elif b.kind == "image" and b.path is not None:
            src = _img_src(b.path)
            if src:
                out.append(f'<figure><img src="{src}" alt="{e(b.text)}"><figcaption>{e(b.text)}</figcaption></figure>')
            else:
                out.append(f'<div class="note">{e(f"chart missing: {b.path}")}</div>')
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"
