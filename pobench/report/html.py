"""A self-contained HTML report: the same sections as the screen table, and the PNG plots embedded as base64,
so the one file can be mailed or archived without its folder."""
from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1500px}
table{border-collapse:collapse;margin:0.5em 0 0.3em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}.caption{color:#555;font-size:0.9em}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}"""


def section_html(sec) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in sec.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in sec.rows)
    caption = "<br>".join(html.escape(c) for c in sec.caption)
    return (f"<h3>{html.escape(sec.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<div class='caption'>{caption}</div>")


def to_html(report: dict, secs: list, plots: list[tuple[str, Path]]) -> str:
    figures = "".join(
        f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,"
        f"{base64.b64encode(Path(path).read_bytes()).decode()}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, path in plots)
    tables = "".join(section_html(s) for s in secs)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>pobench report</title><style>{STYLE}</style>"
            f"</head><body><h1>pobench report</h1><p class='caption'>results: {html.escape(report['results'])}</p>"
            f"{tables}<h2>plots</h2>{figures}</body></html>\n")
