"""`stats/dashboard.html`: one self-contained page (plotly.js inlined, data embedded) that opens from
disk with no server and no network. Figures are built here with plotly; the searchable table and the
language panel are a little plain JavaScript over the embedded statistics.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import polars as pl
from plotly.offline import get_plotlyjs

from pipeline.reporting.stats import METRICS, STATS_DIR, load

TOP_NATURAL = 100
TOP_PROGRAMMING = 10
FUNNEL_LANGUAGES = 30
PANEL_METRICS = ("query_chars", "positive_chars", "query_lang_conf", "margin", "negatives")
TABLE_COLUMNS = (
    "language",
    "name",
    "script_name",
    "family",
    "records",
    "share",
    "tokens",
    "query_chars_p50",
    "positive_chars_p50",
    "query_lang_conf_p50",
    "cross_lingual_share",
    "negatives",
    "margin_p50",
    "exact_dup_clusters",
    "near_dup_clusters",
    "removed",
    "decontaminated",
    "sources",
    "tasks",
)


def _layout(title: str, **kw: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
        "height": 420,
        "template": "plotly_white",
        **kw,
    }


def _sort_buttons(languages: pl.DataFrame) -> list[dict[str, Any]]:
    """Dropdown: reorder the language bars by records, name, script or family; log or linear axis."""
    orders = {
        "by records": languages.sort("records", descending=True),
        "by name": languages.sort("name"),
        "by script": languages.sort("script_name", "records", descending=[False, True], nulls_last=True),
        "by family": languages.sort("family", "records", descending=[False, True]),
    }
    buttons = [
        {"label": label, "method": "relayout", "args": [{"xaxis.categoryarray": df["language"].to_list()}]}
        for label, df in orders.items()
    ]
    scales = [{"label": s, "method": "relayout", "args": [{"yaxis.type": s}]} for s in ("log", "linear")]
    return [
        {"buttons": buttons, "x": 0.0, "y": 1.03, "xanchor": "left", "yanchor": "bottom"},
        {"buttons": scales, "x": 0.25, "y": 1.03, "xanchor": "left", "yanchor": "bottom"},
    ]


def _language_bars(languages: pl.DataFrame) -> go.Figure:
    fig = go.Figure()
    for family, part in languages.group_by("family", maintain_order=True):
        fig.add_bar(
            x=part["language"].to_list(),
            y=part["records"].to_list(),
            name=str(family[0]),
            customdata=part["name"].to_list(),
            hovertemplate="%{customdata} (%{x})<br>%{y:,} records<extra>%{fullData.name}</extra>",
        )
    fig.update_layout(
        **_layout(
            f"Records per language ({languages.height} languages; colour: family)",
            height=480,
            margin={"l": 60, "r": 20, "t": 100, "b": 60},  # the menus sit between the title and the plot
        ),
        barmode="stack",
        updatemenus=_sort_buttons(languages),
        yaxis_type="log",
        xaxis={"categoryorder": "array", "categoryarray": languages["language"].to_list()},
    )
    return fig


def _treemap(languages: pl.DataFrame, group: str, title: str) -> go.Figure:
    df = languages.with_columns(pl.col(group).fill_null("none"))
    groups = df.group_by(group).agg(pl.col("records").sum())
    fig = go.Figure(
        go.Treemap(
            ids=[f"g/{g}" for g in groups[group]] + [f"l/{x}" for x in df["language"]],
            labels=groups[group].to_list() + [f"{n} ({x})" for n, x in zip(df["name"], df["language"])],
            parents=[""] * groups.height + [f"g/{g}" for g in df[group]],
            values=groups["records"].to_list() + df["records"].to_list(),
            branchvalues="total",
            hovertemplate="%{label}<br>%{value:,} records<extra></extra>",
        )
    )
    fig.update_layout(**_layout(title, height=480))
    return fig


def _top(languages: pl.DataFrame, kind: str, n: int, title: str) -> go.Figure:
    top = languages.filter(pl.col("kind") == kind).head(n)
    fig = go.Figure(
        go.Bar(
            x=top["name"].to_list(),
            y=top["records"].to_list(),
            customdata=top["language"].to_list(),
            hovertemplate="%{x} (%{customdata})<br>%{y:,} records<extra></extra>",
        )
    )
    if top.height == 0:
        fig.add_annotation(
            text=f"no {kind} languages in this run", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
    fig.update_layout(**_layout(f"{title} ({top.height} shown)", yaxis_type="log" if kind == "natural" else "linear"))
    return fig


def _tasks(tables: dict[str, pl.DataFrame]) -> go.Figure:
    sources = tables["sources"].group_by("task", "source").agg(pl.col("records").sum()).sort("task", "source")
    fig = go.Figure()
    for source, part in sources.group_by("source", maintain_order=True):
        fig.add_bar(x=part["task"].to_list(), y=part["records"].to_list(), name=str(source[0]))
    fig.update_layout(**_layout("Records per task type (stacked by source)"), barmode="stack")
    return fig


def _funnel(tables: dict[str, pl.DataFrame], languages: pl.DataFrame) -> tuple[go.Figure, go.Figure]:
    funnel = tables["funnel"]
    steps = funnel.filter(pl.col("kind") == "out").group_by("step").agg(pl.col("rows").sum()).sort("step")
    overall = go.Figure(
        go.Funnel(y=steps["step"].to_list(), x=steps["rows"].to_list(), textinfo="value+percent initial")
    )
    overall.update_layout(**_layout("Rows kept after each step"))
    top = languages.head(FUNNEL_LANGUAGES)["language"].to_list()
    dropped = (
        funnel.filter((pl.col("kind") == "dropped") & pl.col("language").is_in(top))
        .group_by("language", "reason")
        .agg(pl.col("rows").sum())
    )
    per_lang = go.Figure()
    for reason, part in dropped.sort("reason").group_by("reason", maintain_order=True):
        per_lang.add_bar(x=part["language"].to_list(), y=part["rows"].to_list(), name=str(reason[0]))
    per_lang.update_layout(
        **_layout(
            f"Rows removed per language and reason (top {len(top)} languages; before language ID rows count as und)"
        ),
        barmode="stack",
        xaxis={"categoryorder": "array", "categoryarray": top},
    )
    return overall, per_lang


def _histogram(
    hist: pl.DataFrame, metric: str, title: str, log_y: bool = False, min_value: float | None = None
) -> go.Figure:
    h = hist.filter(pl.col("metric") == metric)
    if min_value is not None:
        h = h.filter(pl.col("bin_lo") >= min_value)
    h = h.group_by("bin", "bin_lo", "bin_hi").agg(pl.col("count").sum()).sort("bin")
    unit = (h["bin_hi"] - h["bin_lo"]) == 1  # a bin holding one integer: a bar on that integer
    x = pl.select(pl.when(unit).then(h["bin_lo"]).otherwise((h["bin_lo"] + h["bin_hi"]) / 2)).to_series()
    width = pl.select(pl.when(unit).then(0.8).otherwise(h["bin_hi"] - h["bin_lo"])).to_series()
    fig = go.Figure(
        go.Bar(
            x=x.to_list(),
            y=h["count"].to_list(),
            width=width.to_list(),
            customdata=list(zip(h["bin_lo"].to_list(), h["bin_hi"].to_list())),
            hovertemplate="[%{customdata[0]:.3g}, %{customdata[1]:.3g}): %{y:,}<extra></extra>",
        )
    )
    if h.height == 0:
        fig.add_annotation(
            text="nothing to show in this run", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
    fig.update_layout(
        **_layout(title, xaxis_title=METRICS[metric].description, yaxis_type="log" if log_y else "linear")
    )
    return fig


def _comparison(tables: dict[str, pl.DataFrame]) -> list[tuple[str, go.Figure]]:
    figs = []
    if "comparison" in tables:
        c = tables["comparison"].head(60)
        fig = go.Figure(
            [
                go.Bar(x=c["language"].to_list(), y=c["share"].to_list(), name="this run"),
                go.Bar(x=c["language"].to_list(), y=c["reference_share"].to_list(), name="reference"),
            ]
        )
        fig.update_layout(
            **_layout("Share per language: this run vs the reference (top 60)"), barmode="group", yaxis_type="log"
        )
        figs.append(("comparison", fig))
    langs = tables["languages"]
    if "share_change" in langs.columns:
        d = langs.sort(pl.col("share_change").abs(), descending=True).head(40)
        fig = go.Figure(
            go.Bar(
                x=d["language"].to_list(),
                y=d["share_change"].to_list(),
                customdata=d["name"].to_list(),
                hovertemplate="%{customdata}: %{y:+.4f}<extra></extra>",
            )
        )
        tvd = 0.5 * float(langs["share_change"].abs().sum())
        fig.update_layout(
            **_layout(f"Drift against the previous run: change of share (40 largest; total variation {tvd:.4f})")
        )
        figs.append(("drift", fig))
    return figs


def _filters(tables: dict[str, pl.DataFrame], top: int = 40) -> list[tuple[str, go.Figure]]:
    """Which filter eats which language: the drop rate of each filter in the largest languages
    (the counts on hover)."""
    table = tables.get("filters")
    if table is None or not table.height:
        return []
    table = table.filter(pl.col("filter").is_not_null())
    if not table.height:  # the stage found nothing to drop
        return []
    languages = (
        table.group_by("language")
        .agg(pl.col("rows_in").first())
        .sort("rows_in", descending=True)["language"]
        .head(top)
        .to_list()
    )
    names = table["filter"].unique().sort().to_list()
    cell = {(r["language"], r["filter"]): r for r in table.iter_rows(named=True)}
    z = [[100 * cell[(lang, f)]["rate"] for f in names] for lang in languages]
    text = [[f"{cell[(lang, f)]['dropped']:,} of {cell[(lang, f)]['rows_in']:,}" for f in names] for lang in languages]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=languages,
            text=text,
            colorscale="Reds",
            colorbar={"title": "% dropped"},
            hovertemplate="%{y} / %{x}: %{z:.2f}% (%{text})<extra></extra>",
        )
    )
    fig.update_layout(
        **_layout(
            f"Rows each filter dropped, % of a language's rows (top {len(languages)} languages)",
            height=max(420, 18 * len(languages)),
        )
    )
    return [("filters", fig)]


def figures(tables: dict[str, pl.DataFrame]) -> list[tuple[str, go.Figure]]:
    languages = tables["languages"]
    hist = tables["histograms"]
    overall, per_lang = _funnel(tables, languages)
    return [
        ("languages", _language_bars(languages)),
        ("scripts", _treemap(languages, "script_name", "Languages grouped by script")),
        ("families", _treemap(languages, "family", "Languages grouped by family")),
        ("top_natural", _top(languages, "natural", TOP_NATURAL, f"Top {TOP_NATURAL} natural languages")),
        (
            "top_programming",
            _top(languages, "programming", TOP_PROGRAMMING, f"Top {TOP_PROGRAMMING} programming languages"),
        ),
        ("tasks", _tasks(tables)),
        ("funnel", overall),
        ("funnel_languages", per_lang),
        (
            "confidence",
            _histogram(hist, "query_lang_conf", "Language-ID confidence of queries (all languages)", log_y=True),
        ),
        (
            "exact_clusters",
            _histogram(hist, "dup_count", "Exact-duplicate cluster sizes (clusters of 2 or more)", True, 2),
        ),
        (
            "near_clusters",
            _histogram(hist, "near_dup_count", "Near-duplicate cluster sizes (clusters of 2 or more)", True, 2),
        ),
        ("negatives", _histogram(hist, "negatives", "Hard negatives per query")),
        ("margins", _histogram(hist, "margin", "Score margin: positive minus hardest negative")),
        *_filters(tables),
        *_comparison(tables),
    ]


def _records(df: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts, with NaN and infinities as null (JSON has neither; JSON.parse would fail)."""
    floats = [c for c, t in df.schema.items() if t.is_float()]
    return df.with_columns(pl.when(pl.col(c).is_finite()).then(pl.col(c)) for c in floats).to_dicts()


def render(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the dashboard of a run whose statistics exist; returns the HTML file's path."""
    run_dir = Path(run_dir)
    tables = load(run_dir)
    meta = json.loads((run_dir / STATS_DIR / "meta.json").read_text())
    out = Path(out) if out else run_dir / STATS_DIR / "dashboard.html"
    languages = tables["languages"]
    data = {
        "meta": meta,
        "languages": _records(languages.select([c for c in TABLE_COLUMNS if c in languages.columns])),
        "histograms": _records(tables["histograms"].filter(pl.col("metric").is_in(PANEL_METRICS))),
        "funnel": _records(tables["funnel"].filter(pl.col("kind") != "flagged")),
        "samples": _records(tables["samples"]),
        "figures": {name: json.loads(fig.to_json()) for name, fig in figures(tables)},
        "metric_names": {m: METRICS[m].description for m in PANEL_METRICS},
    }
    totals = {
        "records": int(languages["records"].sum()),
        "languages": languages.height,
        "tokens": int(languages["tokens"].sum()),
        "sources": tables["sources"]["source"].n_unique(),
    }
    page = _PAGE.format(
        title=html.escape(f"{run_dir.name}: corpus statistics"),
        run=html.escape(str(run_dir)),
        summary=html.escape(
            f"{totals['records']:,} records · {totals['languages']} languages · "
            f"{totals['tokens']:,} tokens ({meta['tokens']}) · "
            f"{totals['sources']} sources · shards {meta['shards'][:8]}"
        ),
        plotly=get_plotlyjs(),
        data=json.dumps(data, ensure_ascii=False, default=str).replace("</", "<\\/"),
        charts="\n".join(f'<div class="chart" id="fig-{name}"></div>' for name in data["figures"]),
        script=_SCRIPT,
    )
    out.write_text(page, encoding="utf-8")
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 1em; }}
.chart {{ min-height: 420px; border: 1px solid #eee; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }}
th {{ cursor: pointer; position: sticky; top: 0; background: #fafafa; }} td:nth-child(-n+4) {{ text-align: left; }}
#table-wrap {{ max-height: 520px; overflow: auto; }}
.sample {{ border-left: 3px solid #ccc; padding-left: .6em; margin: .5em 0; white-space: pre-wrap; }}
#panel-figures {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1em; }}
</style>
<script>{plotly}</script>
</head><body>
<h1>{title}</h1><p>{run}<br>{summary}</p>
<h2>Charts</h2><div class="charts">{charts}</div>
<h2>All languages</h2>
<input id="search" type="search" placeholder="search language, name, script, family" size="40"> <span id="shown"></span>
<div id="table-wrap"><table id="languages"><thead></thead><tbody></tbody></table></div>
<h2>One language</h2>
<select id="language-select"></select>
<div id="panel"><table id="panel-figures-table"></table>
<div id="panel-figures"></div><div id="panel-samples"></div></div>
<script type="application/json" id="stats-data">{data}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = r"""
const DATA = JSON.parse(document.getElementById('stats-data').textContent);
const fmt = v => typeof v === 'number' ? (Number.isInteger(v) ? v.toLocaleString('en') : v.toPrecision(4)) : (v ?? '');
for (const [name, fig] of Object.entries(DATA.figures)) {
  Plotly.newPlot('fig-' + name, fig.data, fig.layout, {responsive: true});
}
// The table of all languages: search filters rows, a click on a header sorts by that column.
const cols = Object.keys(DATA.languages[0] || {});
const thead = document.querySelector('#languages thead'), tbody = document.querySelector('#languages tbody');
thead.innerHTML = '<tr>' + cols.map(c => `<th data-col="${c}">${c}</th>`).join('') + '</tr>';
let rows = DATA.languages.slice(), sortCol = 'records', sortDesc = true;
function drawTable() {
  const q = document.getElementById('search').value.toLowerCase();
  const shown = rows.filter(r => !q || [r.language, r.name, r.script_name, r.family].join(' ')
    .toLowerCase().includes(q));
  shown.sort((a, b) => (a[sortCol] > b[sortCol] ? 1 : a[sortCol] < b[sortCol] ? -1 : 0) * (sortDesc ? -1 : 1));
  tbody.innerHTML = shown.map(r => '<tr>' + cols.map(c => `<td>${fmt(r[c])}</td>`).join('') + '</tr>').join('');
  document.getElementById('shown').textContent = `${shown.length} of ${rows.length} languages`;
}
thead.addEventListener('click', e => {
  const c = e.target.dataset.col; if (!c) return;
  sortDesc = c === sortCol ? !sortDesc : true; sortCol = c; drawTable();
});
document.getElementById('search').addEventListener('input', drawTable);
drawTable();
// The language panel: figures, funnel, histograms and sample records of one language.
const select = document.getElementById('language-select');
select.innerHTML = DATA.languages
  .map(r => `<option value="${r.language}">${r.name} (${r.language}): ${fmt(r.records)}</option>`).join('');
const esc = s => String(s ?? '').replace(/[&<>]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;'}[c]));
function drawPanel() {
  const lang = select.value, row = DATA.languages.find(r => r.language === lang) || {};
  document.getElementById('panel-figures-table').innerHTML =
    Object.entries(row).map(([k, v]) => `<tr><th>${k}</th><td>${esc(fmt(v))}</td></tr>`).join('');
  const box = document.getElementById('panel-figures');
  box.innerHTML = '';
  const add = (id, data, layout) => {
    const d = document.createElement('div'); d.className = 'chart'; d.id = id; box.appendChild(d);
    Plotly.newPlot(d, data, Object.assign({height: 360, margin: {l: 50, r: 10, t: 40, b: 50},
                                           template: DATA.figures.languages.layout.template}, layout),
                   {responsive: true});
  };
  const f = DATA.funnel.filter(r => r.language === lang);
  const steps = [...new Set(f.map(r => r.step))].sort();
  add('panel-funnel', [
    {type: 'bar', name: 'kept', x: steps,
     y: steps.map(s => f.filter(r => r.step === s && r.kind === 'out').reduce((a, r) => a + r.rows, 0))},
    ...[...new Set(f.filter(r => r.kind === 'dropped').map(r => r.reason))].map(reason => ({
      type: 'bar', name: reason, x: steps,
      y: steps.map(s => f.filter(r => r.step === s && r.reason === reason).reduce((a, r) => a + r.rows, 0))}))],
    {title: {text: 'Funnel: rows kept and removed per step'}, barmode: 'stack'});
  for (const [metric, label] of Object.entries(DATA.metric_names)) {
    const h = DATA.histograms.filter(r => r.language === lang && r.metric === metric);
    if (!h.length) continue;
    const unit = r => r.bin_hi - r.bin_lo === 1;
    add('panel-' + metric, [{type: 'bar', x: h.map(r => unit(r) ? r.bin_lo : (r.bin_lo + r.bin_hi) / 2),
                             y: h.map(r => r.count), width: h.map(r => unit(r) ? 0.8 : r.bin_hi - r.bin_lo)}],
        {title: {text: label}});
  }
  document.getElementById('panel-samples').innerHTML = '<h3>Sample records</h3>' +
    DATA.samples.filter(s => s.language === lang).map(s =>
      `<div class="sample"><b>${esc(s.source)} · ${esc(s.task)}</b>` +
      `${s.instruction ? ' · <i>' + esc(s.instruction) + '</i>' : ''}<br>` +
      `<b>query:</b> ${esc(s.query)}${s.positive ? '<br><b>positive:</b> ' + esc(s.positive) : ''}` +
      `${s.label ? '<br><b>label:</b> ' + esc(s.label) : ''}</div>`).join('');
}
select.addEventListener('change', drawPanel);
drawPanel();
"""
