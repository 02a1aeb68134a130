"""The savings report: what routed traffic cost against one baseline model, at what success, over a period.

One builder for both places it is shown: ``GET /dashboard`` (from the outcome
store) and ``thrifty report --html FILE --logs served.parquet`` (from an
exported log). Both feed it a DataFrame of decisions, one row per answered
request, with the columns of ``thrifty logs export`` (:data:`COLUMNS`; the
served-traffic ones are optional and their figures say "not recorded" when
absent):

``ts``                  epoch seconds of the request
``model``               the model that answered
``input_tokens``, ``output_tokens``, ``cost_usd``   as the upstream reported them
``success``             the latest feedback (0/1, or a score in [0, 1]); NaN without feedback
``attempts``            upstream calls made (retries and fail-overs included)
``failover``            answered by another model than the first one called
``decision_latency_s``  time to decide (router scoring, batching included)
``novelty``             how unlike the router's training prompts the prompt was (1.0 = typical)
``candidates``          the decision's candidates (JSON list of ``{model, p_success, expected_output_tokens, ...}``)

The figures (each computed by :func:`build`, documented beside it):

* **spend** -- the sum of ``cost_usd``;
* **counterfactual** -- what the same requests would have cost on the
  baseline model: each request's actual input tokens at the baseline's input
  price, plus the baseline's *expected* output tokens for that prompt (the
  router scores every candidate, so a routed decision holds the baseline's
  prediction) at its output price. A request whose decision does not hold the
  baseline (a model requested by id) uses the mean of those predictions over
  the period, else its own output tokens. Prices: the catalog's.
* **baseline** -- by default the model the router predicts most likely to
  succeed, averaged over the period's decisions (every routed decision scores
  every model, so this average covers all of the traffic, not only what each
  model was sent); or the one asked for.
* **success** -- the mean feedback over requests that have feedback, with a
  95% Wilson interval (scores in [0, 1] count as fractional successes);
* **USD per success** -- the spend on requests with feedback divided by their successes;
* **share of traffic per model** over time, **fail-overs**, **decision
  latency** (p50 / p99) and **novelty** (mean, share above 1.5), where recorded.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import pandas as pd

COLUMNS: dict[str, str] = {
    "ts": "float64",
    "model": "string",
    "input_tokens": "float64",
    "output_tokens": "float64",
    "cost_usd": "float64",
    "success": "float64",
    "attempts": "float64",
    "failover": "float64",
    "decision_latency_s": "float64",
    "novelty": "float64",
    "candidates": "string",
}
REQUIRED = ("ts", "model", "input_tokens", "output_tokens", "cost_usd")
NOVEL = 1.5  # novelty above which a prompt counts as unlike the training prompts
Z95 = 1.959963984540054


class ReportError(ValueError):
    """The decisions cannot make a report (a missing column, an unknown baseline model)."""


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (``successes`` may be fractional)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def normalise(frame: pd.DataFrame, *, where: str = "the decisions") -> pd.DataFrame:
    """``frame`` with every column of :data:`COLUMNS` (absent optional ones as NaN), typed; a clear error if a required one is missing."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ReportError(f"{where} lack the column(s) {', '.join(missing)}: export them with `thrifty logs export` "
                          "(which writes every column the report needs)")
    out = pd.DataFrame(index=frame.index)
    for column, dtype in COLUMNS.items():
        if column in frame.columns:
            values = frame[column]
            if column == "failover":
                values = values.astype("float64")
            out[column] = values.astype(dtype)
        else:
            out[column] = pd.Series(np.nan if dtype == "float64" else pd.NA, index=frame.index, dtype=dtype)
    return out.sort_values("ts", kind="stable").reset_index(drop=True)


def _candidates(text: Any) -> dict[str, dict]:
    if text is None or text is pd.NA or (isinstance(text, float) and math.isnan(text)):
        return {}
    try:
        items = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return {c["model"]: c for c in items if isinstance(c, dict) and "model" in c}


@dataclass
class Report:
    """The figures of one period (all money in USD)."""

    since: float
    until: float
    baseline: str | None
    baseline_reason: str
    requests: int = 0
    spend: float = 0.0
    counterfactual: float = 0.0
    labeled: int = 0
    successes: float = 0.0
    success_rate: float = math.nan
    success_ci: tuple[float, float] = (math.nan, math.nan)
    usd_per_success: float = math.nan
    retried: int = 0  # requests with more than one upstream call
    failovers: int = 0  # answered by another model than the first called
    attempts_recorded: bool = False
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    novelty_mean: float = math.nan
    novelty_share: float = math.nan  # share of requests above NOVEL
    models: dict[str, dict] = field(default_factory=dict)  # model -> requests, share, spend, labeled, success
    buckets: list[dict] = field(default_factory=list)  # start, label, per-model counts, spend, counterfactual, novelty
    bucket_name: str = "day"
    counterfactual_note: str = ""

    @property
    def savings(self) -> float:
        return self.counterfactual - self.spend

    @property
    def savings_share(self) -> float:
        return self.savings / self.counterfactual if self.counterfactual > 0 else math.nan

    def to_dict(self) -> dict:
        from dataclasses import asdict

        data = asdict(self)
        data["savings"], data["savings_share"] = self.savings, self.savings_share
        return data


def default_baseline(frame: pd.DataFrame, prices: Mapping[str, Any]) -> tuple[str | None, str]:
    """The model the router predicts most likely to succeed on the period's requests (mean over its decisions)."""
    totals: dict[str, list[float]] = {}
    for text in frame["candidates"]:
        for model, c in _candidates(text).items():
            p = c.get("p_success")
            if isinstance(p, (int, float)) and math.isfinite(p):
                totals.setdefault(model, []).append(float(p))
    scored = {m: (float(np.mean(v)), len(v)) for m, v in totals.items() if m in prices}
    if scored:
        # among the models scored on the most decisions (a model requested by id alone is not comparable):
        # the highest mean predicted success; the cheaper one on a tie
        most = max(n for _, n in scored.values())
        best = max((m for m in scored if scored[m][1] == most), key=lambda m: (scored[m][0], -_price(prices[m])))
        return best, f"the model the router predicts most likely to succeed on this period's requests (mean p = {scored[best][0]:.3f})"
    answered = frame["model"].dropna()
    if len(answered):
        model = answered.value_counts().index[0]
        if model in prices:
            return str(model), "the model that answered most requests (the decisions hold no success predictions)"
    return None, "no model to compare with"


def _price(price: Any) -> float:
    return float(price.input_usd_per_mtok) + float(price.output_usd_per_mtok)


BUCKETS = (("10 s", 10.0), ("30 s", 30.0), ("minute", 60.0), ("5 minutes", 300.0), ("15 minutes", 900.0),
           ("hour", 3600.0), ("6 hours", 21600.0), ("day", 86400.0), ("week", 604800.0))


def _bucket(seconds: float) -> tuple[str, float]:
    """The widest bucket that still cuts the period into at least 12 (at most a week)."""
    fitting = [b for b in BUCKETS if seconds / b[1] >= 12]
    return fitting[-1] if fitting else BUCKETS[0]


def build(frame: pd.DataFrame, prices: Mapping[str, Any], *, since: float | None = None, until: float | None = None,
          baseline: str | None = None, where: str = "the decisions") -> Report:
    """The report of the requests with ``since <= ts < until`` (default: all of ``frame``).

    ``prices``: model -> an object with ``input_usd_per_mtok`` / ``output_usd_per_mtok`` (a catalog's ``prices()``).
    """
    frame = normalise(frame, where=where)
    if since is None:
        since = float(frame["ts"].min()) if len(frame) else 0.0
    if until is None:
        until = float(frame["ts"].max()) + 1e-6 if len(frame) else since + 86400
    if not until > since:
        raise ReportError(f"the period is empty: until ({_iso(until)}) is not after since ({_iso(since)})")
    period = frame[(frame["ts"] >= since) & (frame["ts"] < until)].reset_index(drop=True)
    if baseline is not None:
        if baseline not in prices:
            raise ReportError(f"baseline model {baseline!r} has no price in the catalog")
        reason = "chosen"
    else:
        baseline, reason = default_baseline(period, prices)
    report = Report(since=float(since), until=float(until), baseline=baseline, baseline_reason=reason)
    report.bucket_name, width = _bucket(until - since)
    n = len(period)
    report.requests = n
    if n == 0:
        return report

    cost = period["cost_usd"].fillna(0.0).to_numpy(float)
    report.spend = float(cost.sum())

    # counterfactual: every request on the baseline
    counter = np.zeros(n)
    if baseline is not None:
        price = prices[baseline]
        cands = [_candidates(t) for t in period["candidates"]]
        expected = np.array([float(c[baseline]["expected_output_tokens"]) if baseline in c and _finite(c[baseline].get("expected_output_tokens")) else np.nan
                             for c in cands])
        held = np.isfinite(expected)
        fallback = float(expected[held].mean()) if held.any() else np.nan
        out_tokens = np.where(held, expected, fallback if math.isfinite(fallback) else period["output_tokens"].fillna(0).to_numpy(float))
        inputs = period["input_tokens"].fillna(0).to_numpy(float)
        counter = (inputs * price.input_usd_per_mtok + out_tokens * price.output_usd_per_mtok) / 1e6
        report.counterfactual = float(counter.sum())
        missing = int((~held).sum())
        report.counterfactual_note = (
            f"{n - missing} of {n} requests priced with the router's expected output tokens for {baseline}"
            + (f"; {missing} with {'their mean' if math.isfinite(fallback) else 'the actual output tokens'}" if missing else "")
        )

    # success from feedback
    success = period["success"].to_numpy(float)
    labeled = np.isfinite(success)
    report.labeled = int(labeled.sum())
    if report.labeled:
        report.successes = float(success[labeled].sum())
        report.success_rate = report.successes / report.labeled
        report.success_ci = wilson(report.successes, report.labeled)
        if report.successes > 0:
            report.usd_per_success = float(cost[labeled].sum()) / report.successes

    # reliability, latency, novelty
    attempts = period["attempts"].to_numpy(float)
    report.attempts_recorded = bool(np.isfinite(attempts).any())
    report.retried = int((attempts > 1).sum())
    report.failovers = int((period["failover"].to_numpy(float) > 0).sum())
    latency = period["decision_latency_s"].to_numpy(float)
    latency = latency[np.isfinite(latency)]
    if latency.size:
        report.latency_p50_ms = float(np.percentile(latency, 50) * 1000)
        report.latency_p99_ms = float(np.percentile(latency, 99) * 1000)
    novelty = period["novelty"].to_numpy(float)
    scored = np.isfinite(novelty)
    if scored.any():
        report.novelty_mean = float(novelty[scored].mean())
        report.novelty_share = float((novelty[scored] > NOVEL).mean())

    # per model
    for model, group in period.groupby(period["model"].fillna("(none)"), sort=False):
        g_success = group["success"].to_numpy(float)
        g_labeled = np.isfinite(g_success)
        report.models[str(model)] = {
            "requests": int(len(group)),
            "share": len(group) / n,
            "spend": float(group["cost_usd"].fillna(0).sum()),
            "labeled": int(g_labeled.sum()),
            "success": float(g_success[g_labeled].mean()) if g_labeled.any() else math.nan,
        }
    report.models = dict(sorted(report.models.items(), key=lambda kv: -kv[1]["requests"]))

    # over time
    start = math.floor(since / width) * width
    index = ((period["ts"].to_numpy(float) - start) // width).astype(int)
    models = list(report.models)
    for k in range(int(math.ceil((until - start) / width))):
        mask = index == k
        counts = period.loc[mask, "model"].fillna("(none)").value_counts()
        nov = novelty[mask & scored]
        report.buckets.append({
            "start": start + k * width,
            "requests": int(mask.sum()),
            "models": {m: int(counts.get(m, 0)) for m in models},
            "spend": float(cost[mask].sum()),
            "counterfactual": float(counter[mask].sum()),
            "novelty": float(nov.mean()) if nov.size else math.nan,
        })
    return report


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# -- HTML ----------------------------------------------------------------------------------------------

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
           "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8"]

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 28px;display:flex;align-items:baseline;gap:18px;flex-wrap:wrap}
header h1{font-size:20px;margin:0}header .period{opacity:.8;font-size:14px}
main{padding:20px 28px;max-width:1200px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:14px;margin-bottom:18px}
.card{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#5a6275}
.card .value{font-size:26px;font-weight:600;margin-top:4px}.card .sub{font-size:13px;color:#5a6275;margin-top:4px}
.good{color:#2e7d32}.bad{color:#c62828}
section{background:#fff;border-radius:8px;padding:14px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08);margin-bottom:18px}
section h2{font-size:16px;margin:0 0 10px}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{padding:6px 8px;text-align:right;border-bottom:1px solid #eceef2}
th:first-child,td:first-child{text-align:left}th{color:#5a6275;font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:10px;font-size:13px;margin-top:6px}.legend span{display:inline-flex;align-items:center;gap:5px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px}
form.period{display:flex;gap:10px;align-items:end;flex-wrap:wrap;font-size:13px}form.period label{display:flex;flex-direction:column;gap:3px}
form.period input,form.period select{padding:5px 7px;border:1px solid #c9ced8;border-radius:5px;font-size:13px}
form.period button{padding:6px 14px;border:0;border-radius:5px;background:#1d2330;color:#fff;font-size:13px}
.empty{padding:40px;text-align:center;font-size:18px;color:#5a6275}.error{padding:24px;background:#fdecea;color:#8a1c1c;border-radius:8px}
.note{font-size:12px;color:#5a6275;margin-top:8px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def usd(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.4g}"


def pct(value: float, digits: int = 1) -> str:
    return "–" if not math.isfinite(value) else f"{value * 100:.{digits}f}%"


def _ms(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.2f} ms"


def _label(ts: float, bucket: str) -> str:
    when = datetime.fromtimestamp(ts, tz=timezone.utc)
    width = dict(BUCKETS)[bucket]
    if width < 3600:
        return when.strftime("%H:%M:%S" if width < 60 else "%H:%M")
    return when.strftime("%m-%d %H:00") if width < 86400 else when.strftime("%Y-%m-%d")


def share_chart(report: Report, colors: Mapping[str, str], width: int = 1100, height: int = 260) -> str:
    """Share of traffic per model in each period bucket: 100%-stacked bars (server-rendered SVG)."""
    buckets = report.buckets
    left, right, top, bottom = 44, 10, 10, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(1, len(buckets))
    bar = max(1.0, step * 0.8)
    parts = [f'<svg class="chart" id="share-chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="share of traffic per model">']
    for q in (0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - q)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ec"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#5a6275">{int(q * 100)}%</text>')
    every = max(1, len(buckets) // 12)
    for k, b in enumerate(buckets):
        x = left + k * step + (step - bar) / 2
        total = b["requests"]
        y = top + plot_h
        if total:
            for model, count in b["models"].items():
                if not count:
                    continue
                h = plot_h * count / total
                y -= h
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colors[model]}">'
                             f'<title>{_e(_label(b["start"], report.bucket_name))}: {_e(model)} {count} of {total} '
                             f'({count / total:.0%})</title></rect>')
        if k % every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle" '
                         f'fill="#5a6275">{_e(_label(b["start"], report.bucket_name))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def spend_chart(report: Report, width: int = 1100, height: int = 240) -> str:
    """Cumulative spend against the counterfactual, per bucket (server-rendered SVG)."""
    buckets = report.buckets
    left, right, top, bottom = 64, 10, 10, 38
    plot_w, plot_h = width - left - right, height - top - bottom
    spend = np.cumsum([b["spend"] for b in buckets])
    counter = np.cumsum([b["counterfactual"] for b in buckets])
    peak = float(max(spend.max(initial=0), counter.max(initial=0))) or 1.0
    n = max(1, len(buckets))

    def point(k: int, v: float) -> str:
        x = left + plot_w * (k + 1) / n
        return f"{x:.1f},{top + plot_h * (1 - v / peak):.1f}"

    parts = [f'<svg class="chart" id="spend-chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="cumulative spend and counterfactual">']
    for q in (0, 0.5, 1.0):
        y = top + plot_h * (1 - q)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ec"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#5a6275">{_e(usd(peak * q))}</text>')
    origin = f"{left},{top + plot_h}"
    for values, color, name in ((counter, "#c62828", "counterfactual"), (spend, "#2e7d32", "spend")):
        points = " ".join([origin] + [point(k, v) for k, v in enumerate(values)])
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2.5"><title>{name}</title></polyline>')
    every = max(1, len(buckets) // 12)
    for k, b in enumerate(buckets):
        if k % every == 0:
            x = left + plot_w * (k + 1) / n
            parts.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="end" '
                         f'fill="#5a6275">{_e(_label(b["start"], report.bucket_name))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _card(label: str, value: str, sub: str = "", ident: str = "", cls: str = "", raw: Any = None, **data_: float) -> str:
    """A figure; ``raw`` (the unrounded number) goes in ``data-value``, ``data_`` in ``data-<name>``, for programs reading the page."""
    values = {"value": raw, **data_}
    data = "".join(f' data-{k}="{v!r}"' for k, v in values.items()
                   if v is not None and not (isinstance(v, float) and not math.isfinite(v)))
    return (f'<div class="card"><div class="label">{_e(label)}</div>'
            f'<div class="value {cls}" id="{ident}"{data}>{_e(value)}</div><div class="sub">{_e(sub)}</div></div>')


def render(report: Report, *, title: str = "thrifty — savings", form: str = "", source: str = "") -> str:
    """The report as one HTML page (inline CSS and SVG: nothing to fetch)."""
    period = f"{_iso(report.since)} — {_iso(report.until)}"
    head = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{STYLE}</style></head><body>'
            f'<header><h1>{_e(title)}</h1><span class="period" id="period">{_e(period)}</span>'
            f'<span class="period">{_e(source)}</span></header><main>{form}')
    if report.requests == 0:
        return head + '<section><div class="empty" id="no-traffic">no traffic in this period</div></section></main></body></html>'
    savings_cls = "good" if report.savings >= 0 else "bad"
    ci = report.success_ci
    cards = "".join([
        _card("spend", usd(report.spend), f"{report.requests:,} requests", "spend", raw=report.spend),
        _card(f"all on {report.baseline}", usd(report.counterfactual), "the counterfactual (see below)", "counterfactual",
              raw=report.counterfactual),
        _card("saved", usd(report.savings), f"{pct(report.savings_share)} of the counterfactual", "savings", savings_cls,
              raw=report.savings),
        _card("success (feedback)", pct(report.success_rate),
              f"95% CI {pct(ci[0])} – {pct(ci[1])}, {report.labeled:,} rated" if report.labeled else "no feedback yet", "success",
              raw=report.success_rate, low=report.success_ci[0], high=report.success_ci[1], rated=report.labeled),
        _card("USD per success", usd(report.usd_per_success), "spend on rated requests / their successes", "usd-per-success",
              raw=report.usd_per_success),
        _card("fail-overs", f"{report.failovers:,}" if report.attempts_recorded else "–",
              f"{report.retried:,} requests needed more than one call" if report.attempts_recorded else "not recorded",
              "failovers", raw=report.failovers if report.attempts_recorded else None),
        _card("decision latency p50", _ms(report.latency_p50_ms),
              f"p99 {_ms(report.latency_p99_ms)}" if math.isfinite(report.latency_p50_ms) else "not recorded", "latency",
              raw=report.latency_p50_ms),
        _card("novelty (drift)", "–" if not math.isfinite(report.novelty_mean) else f"{report.novelty_mean:.2f}",
              f"{pct(report.novelty_share)} of prompts above {NOVEL}" if math.isfinite(report.novelty_mean)
              else "not recorded by this router", "novelty", raw=report.novelty_mean),
    ])
    colors = {m: PALETTE[k % len(PALETTE)] for k, m in enumerate(report.models)}
    legend = "".join(f'<span><i style="background:{c}"></i>{_e(m)}</span>' for m, c in colors.items())
    rows = "".join(
        f'<tr data-model="{_e(m)}"><td>{_e(m)}</td><td class="requests">{v["requests"]:,}</td><td>{pct(v["share"])}</td>'
        f'<td class="model-spend">{usd(v["spend"])}</td><td>{v["labeled"]:,}</td><td>{pct(v["success"])}</td></tr>'
        for m, v in report.models.items())
    table = ('<table id="models"><thead><tr><th>model</th><th>requests</th><th>share</th><th>spend</th><th>rated</th>'
             f'<th>success</th></tr></thead><tbody>{rows}</tbody></table>')
    note = (f'<div class="note">Baseline <b>{_e(report.baseline)}</b>: {_e(report.baseline_reason)}. Counterfactual: each request\'s '
            f'input tokens at {_e(report.baseline)}\'s input price plus its expected output tokens at its output price '
            f'({_e(report.counterfactual_note)}). Success: mean feedback of rated requests, Wilson 95% interval. '
            f'Buckets: one {report.bucket_name} each (UTC).</div>')
    return (head + f'<div class="cards">{cards}</div>'
            f'<section><h2>Spend vs everything on {_e(report.baseline)} (cumulative)</h2>{spend_chart(report)}'
            '<div class="legend"><span><i style="background:#2e7d32"></i>spend</span>'
            f'<span><i style="background:#c62828"></i>all on {_e(report.baseline)}</span></div>{note}</section>'
            f'<section><h2>Share of traffic per model (per {report.bucket_name})</h2>{share_chart(report, colors)}'
            f'<div class="legend">{legend}</div></section>'
            f'<section><h2>Models</h2>{table}</section></main></body></html>')


def error_page(message: str, *, title: str = "thrifty — savings") -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{STYLE}</style>'
            f'</head><body><header><h1>{_e(title)}</h1></header><main><div class="error" id="error">'
            f'The report could not be made: {_e(message)}</div></main></body></html>')
