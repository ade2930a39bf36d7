"""``report.html``: one self-contained page to look at a sweep, made from its sweep dir alone.

    Sweep ─▶ slots: each host's jobs laid on as few rows as ran at once
          ─▶ timeline: one bar per job, coloured by outcome (Plotly, its JavaScript inlined)
          ─▶ failed jobs with their errors and logs
          ─▶ the jobs, sortable: overrides that vary, returned number, duration, peak memory

Plotly draws the timeline (zoom, hover, no server); the tables are plain HTML
with a few lines of script to sort them. Nothing is fetched when the page opens.
"""

import html
import json
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ._errors import LauncherError
from ._status_view import clock, timestamp
from ._sweepdir import Sweep
from ._values import show_bytes

REPORT = "report.html"
COLOURS = {"COMPLETED": "#2e7d32", "FAILED": "#c62828", "RUNNING": "#1565c0"}
_OVERLAP_S = 0.05  # a job that starts this soon before another ends on a slot still takes it


def write_report(sweep: Sweep, *, output: Optional[Path] = None) -> Path:
    """Write the report of ``sweep`` to ``output`` (by default report.html in the sweep dir)."""
    path = output or sweep.path / REPORT
    page = render_report(sweep)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise LauncherError(
            f"Cannot write {path}: {error}; give another file with --output"
        ) from None
    return path


def render_report(sweep: Sweep) -> str:
    records = [r for r in sweep.records if timestamp(r.get("started")) is not None]
    drawn = records + _running(sweep)
    rows = slots(drawn)
    parts = [_head(sweep), _summary(sweep, records)]
    parts.append(_timeline(drawn, rows) if drawn else "<p>No job has started yet.</p>")
    parts.append(_failures(sweep.failed))
    parts.append(_jobs_table(sweep.records, rows))
    return _PAGE.format(
        title=html.escape(f"Sweep {sweep.path.name}"),
        body="\n".join(parts),
        script=_SORT_SCRIPT,
        error_script=_ERROR_SCRIPT,
    )


def _running(sweep: Sweep) -> List[Dict[str, Any]]:
    """The jobs running now, as records that end now, for the timeline (a report made mid-sweep)."""
    if sweep.state != "running" or sweep.status is None:
        return []
    now = datetime.fromtimestamp(sweep.read_at, tz=timezone.utc).isoformat(timespec="milliseconds")
    running = []
    for job in sweep.status.get("running") or []:
        began = timestamp(job.get("started"))
        if began is not None and isinstance(job.get("num"), int):
            running.append(
                {**job, "status": "RUNNING", "ended": now, "duration_s": sweep.read_at - began}
            )
    return running


def slots(records: List[Dict[str, Any]]) -> Dict[int, str]:
    """The timeline row of each job (by number): per host, the first slot free when it started."""
    rows: Dict[int, str] = {}
    ends: Dict[str, List[float]] = defaultdict(list)  # host -> when each slot's last job ended
    for record in sorted(records, key=lambda r: (timestamp(r["started"]) or 0, r.get("num", 0))):
        host = str(record.get("host") or "?")
        start = timestamp(record["started"]) or 0.0
        end = timestamp(record.get("ended")) or start
        free = [i for i, ended in enumerate(ends[host]) if ended <= start + _OVERLAP_S]
        slot = free[0] if free else len(ends[host])
        if free:
            ends[host][slot] = end
        else:
            ends[host].append(end)
        rows[record["num"]] = f"{host} slot {slot + 1}"
    if len(ends) == 1:  # one host: the slot says enough
        rows = {num: row.split(" ", 1)[1] for num, row in rows.items()}
    return rows


def _memory(record: Dict[str, Any]) -> str:
    size = record.get("max_rss_bytes")
    if not isinstance(size, (int, float)):
        return ""
    return show_bytes(size)  # as the summary and mem_limit's errors show sizes


def _hover(record: Dict[str, Any]) -> str:
    lines = [
        f"#{record.get('num')} {html.escape(' '.join(record.get('overrides') or []))}",
        f"{record.get('status')} {'for' if record.get('status') == 'RUNNING' else 'in'} "
        f"{record.get('duration_s', 0):.1f} s on "
        f"{html.escape(str(record.get('host')))} pid {record.get('pid')}",
    ]
    if _memory(record):
        lines.append(f"peak memory {_memory(record)}")
    if "value" in record:
        lines.append(f"returned {record['value']:g}")
    if record.get("status") == "FAILED":
        lines.append(html.escape(f"{record.get('error_type')}: {_first_line(record.get('error'))}"))
    return "<br>".join(lines)


def _first_line(text: Any) -> str:
    lines = str(text or "").splitlines()
    return lines[0][:200] if lines else ""


def _timeline(records: List[Dict[str, Any]], rows: Dict[int, str]) -> str:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise LauncherError(
            "hydra-joblib report draws its timeline with Plotly, which is not installed: "
            'pip install "hydra-joblib-launcher[report]"'
        ) from None
    figure = go.Figure()
    for status, colour in COLOURS.items():
        mine = [r for r in records if r.get("status") == status]
        if not mine:
            continue
        figure.add_trace(
            go.Bar(
                orientation="h",
                name=status.lower(),
                y=[rows[r["num"]] for r in mine],
                base=[r["started"] for r in mine],
                x=[max(float(r.get("duration_s") or 0), 0.001) * 1000 for r in mine],
                customdata=[r["num"] for r in mine],
                text=[f"#{r['num']}" for r in mine],
                textposition="inside",
                insidetextanchor="middle",
                hovertext=[_hover(r) for r in mine],
                hoverinfo="text",
                marker={"color": colour, "line": {"color": "white", "width": 1}},
            )
        )
    order = sorted(set(rows.values()), key=_row_order)
    figure.update_layout(
        barmode="overlay",
        height=140 + 26 * len(order),
        margin={"l": 10, "r": 10, "t": 30, "b": 40},
        xaxis={"type": "date", "title": "time (UTC)"},
        yaxis={"categoryorder": "array", "categoryarray": order, "autorange": "reversed"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
    )
    chart = figure.to_html(
        full_html=False, include_plotlyjs=True, div_id="timeline", config={"displaylogo": False}
    )
    return f"<h2>Timeline</h2>\n<p>One row per worker slot, one bar per job.</p>\n{chart}"


def _row_order(row: str) -> Tuple[str, int]:
    head, _, number = row.rpartition(" ")
    return (head, int(number) if number.isdigit() else 0)


def _head(sweep: Sweep) -> str:
    made = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(sweep.read_at))
    return (
        f"<h1>Sweep <code>{html.escape(str(sweep.path.absolute()))}</code></h1>\n"
        f'<p class="quiet">Report made {made} by hydra-joblib report.</p>\n'
        '<p id="script-error" class="error" hidden></p>'
    )


def _summary(sweep: Sweep, records: List[Dict[str, Any]]) -> str:
    failed = len(sweep.failed)
    starts = [timestamp(r["started"]) or 0.0 for r in records]
    ends = [timestamp(r.get("ended")) or 0.0 for r in records]
    span = clock(max(ends) - min(starts)) if records else "0:00"
    busy = sum(float(r.get("duration_s") or 0) for r in records)
    state = sweep.state
    items = [
        f"<b>{len(sweep.records)}</b> jobs ended: <b>{len(sweep.records) - failed}</b> completed, "
        f"<b>{failed}</b> failed",
        f"from the first start to the last end: {span}; jobs ran {clock(busy)} in all",
        f"launcher: {html.escape(state)}",
    ]
    if sweep.needs_resume():
        items.append(f"resume with <code>{html.escape(sweep.resume_command() or '')}</code>")
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def _failures(failed: List[Dict[str, Any]]) -> str:
    if not failed:
        return ""
    rows = "".join(
        f"<tr><td>{r.get('num')}</td><td>{html.escape(' '.join(r.get('overrides') or []))}</td>"
        f"<td><pre>{html.escape(str(r.get('error_type')))}: {html.escape(str(r.get('error')))}</pre></td>"
        f"<td><code>{html.escape(str(r.get('log_file') or ''))}</code></td></tr>"
        for r in failed
    )
    return (
        f"<h2>Failed jobs ({len(failed)})</h2>\n<table><thead><tr><th>#</th><th>overrides</th>"
        f"<th>error</th><th>log</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _split(override: str) -> Tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def _jobs_table(records: List[Dict[str, Any]], rows: Dict[int, str]) -> str:
    """Every ended job: the overrides that vary as columns, what it returned, how long, how big."""
    if not records:
        return ""
    settings = [dict(map(_split, r.get("overrides") or [])) for r in records]
    keys = list(dict.fromkeys(key for each in settings for key in each))
    varying = [k for k in keys if len({each.get(k) for each in settings}) > 1] or keys
    extra = [
        (name, label)
        for name, label in (
            ("value", "returned"),
            ("max_rss_bytes", "peak memory"),
            ("cpu_s", "CPU s"),
            ("attempts", "attempts"),
        )
        if any(name in r for r in records)
    ]
    head = ["#", *varying, *(label for _, label in extra), "duration s", "status", "row"]
    body = []
    for record, setting in zip(records, settings):
        cells = [_cell(record.get("num")), *(_cell(setting.get(k, "")) for k in varying)]
        for name, _ in extra:
            shown = _memory(record) if name == "max_rss_bytes" else None
            cells.append(_cell(record.get(name, ""), shown=shown))
        cells += [
            _cell(record.get("duration_s")),
            _cell(record.get("status")),
            _cell(rows.get(record.get("num", -1), "")),
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = "Results" if extra and extra[0][0] == "value" else "Jobs"
    heads = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    return (
        f"<h2>{title}</h2>\n<p>Click a column's head to sort by it.</p>\n"
        f'<table class="sortable"><thead><tr>{heads}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _cell(value: Any, *, shown: Optional[str] = None) -> str:
    """A table cell; numbers carry their value for sorting."""
    text = shown if shown is not None else ("" if value is None else str(value))
    try:
        key = float(value)
    except (TypeError, ValueError):
        return f"<td>{html.escape(text)}</td>"
    return f'<td data-sort="{json.dumps(key)}">{html.escape(text)}</td>'


# In the head, before the chart's script: a script error is shown on the page, not hidden in a console.
_ERROR_SCRIPT = """
window.addEventListener("error", function (event) {
  var shown = "This page hit a script error: " + event.message;
  var note = document.getElementById("script-error");
  if (note) { note.textContent = shown; note.hidden = false; } else { document.title = shown; }
});
"""

_SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0];
    var up = th.dataset.order !== "up";
    th.closest("tr").querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = up ? "up" : "down";
    function key(row) {
      var cell = row.cells[column];
      return cell.dataset.sort !== undefined ? parseFloat(cell.dataset.sort) : cell.textContent;
    }
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return up ? order : -order;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<script>{error_script}</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; }} h2 {{ font-size: 1.1em; margin-top: 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; cursor: pointer; }}
th[data-order="up"]::after {{ content: " \\25B2"; }} th[data-order="down"]::after {{ content: " \\25BC"; }}
pre {{ margin: 0; white-space: pre-wrap; max-width: 60em; }}
.quiet {{ color: #777; }} .error {{ color: #c62828; font-weight: bold; }}
</style>
</head>
<body>
{body}
<script>{script}</script>
</body>
</html>
"""
