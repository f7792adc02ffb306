"""From raw per-engine figures to the summary (medians, ratios, targets) and the printed tables.

Ratios: ÷ critical path (the physical limit), ÷ floor (what the plain asyncio executor took for
the same graph and node code: the limit on this machine) and ×LG (÷ LangGraph's figure).
Tables are Markdown, so a run can be pasted into bench/RESULTS.md as printed.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

FLOOR, PEER = "asyncio", "langgraph"
TITLES = {"asyncio": "plain asyncio", "langgraph": "LangGraph", "sesame-local": "Sesame in-process",
          "sesame-ray": "Sesame Ray (Python)", "sesame-http": "Sesame HTTP (Serve)"}
GIB, MIB = 2**30, 2**20


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`results`: engine → bench.measure.measure()'s output (engines that failed are absent)."""
    graphs: dict[str, dict[str, Any]] = {}
    for engine, result in results.items():
        for g in result["graphs"]:
            row = graphs.setdefault(g["label"], {k: g[k] for k in ("label", "name", "nodes", "critical_path_s",
                                                                  "llm_latency_ms", "tool_latency_ms")})
            row.setdefault("engines", {})[engine] = {
                "median_s": g["median_s"], "runs": len(g["walls_s"]),
                "stub_cores": g["cpu"]["stub_cores"], "engine_cores": g["cpu"]["engine_cores"],
                "loop_worst_lag": (g["loop_lag"] or {}).get("worst")}
    for row in graphs.values():
        floor = row["engines"].get(FLOOR, {}).get("median_s")
        peer = row["engines"].get(PEER, {}).get("median_s")
        hops = row["nodes"] if row["name"].startswith("chain") else None
        for figures in row["engines"].values():
            t = figures["median_s"]
            figures["x_critical_path"] = _ratio(t, row["critical_path_s"]) if row["critical_path_s"] else None
            figures["x_floor"] = _ratio(t, floor)
            figures["x_langgraph"] = _ratio(t, peer)
            if hops:
                figures["ms_per_hop"] = t / hops * 1000
                figures["overhead_ms_per_hop"] = (t - floor) / hops * 1000 if floor is not None else None

    loads: dict[str, dict[str, Any]] = {}
    for engine, result in results.items():
        runs = result["loads"]
        if not runs:
            continue
        first = runs[0]
        loads[engine] = {
            "graph": first["graph"]["name"], "concurrency": first["concurrency"], "total": first["total"],
            "loads": len(runs), "failed": sum(r["failed"] for r in runs),
            "workflows_per_s": statistics.median(r["workflows_per_s"] for r in runs),
            "p50_s": statistics.median(r["p50_s"] for r in runs),
            "p99_s": statistics.median(r["p99_s"] for r in runs),
            "peak_rss_cluster": [r["peak_rss_cluster"] for r in runs],
            "peak_rss_total": [r["peak_rss_total"] for r in runs],
            "settled_rss_total": [r["settled_rss_cluster"] + r["settled_rss_driver"] for r in runs],
            "engine_cores": statistics.median(r["cpu"]["engine_cores"] for r in runs),
            "stub_cores": statistics.median(r["cpu"]["stub_cores"] for r in runs),
            "cpu_ms_per_workflow": statistics.median(
                r["cpu"]["engine_cpu_s"] / max(r["succeeded"], 1) * 1000 for r in runs),
            "settled_growth_by_process": _growth(runs[0].get("settled_rss_by_process", {}),
                                                 runs[-1].get("settled_rss_by_process", {})),
            "loop_worst_lag": [(r["loop_lag"] or {}).get("worst") for r in runs],
            "loop_p99_lag": [(r["loop_lag"] or {}).get("p99") for r in runs],
            "loop_stalls": sum((r["loop_lag"] or {}).get("stalls", 0) for r in runs),
            "stall_stacks": [s for r in runs for s in (r["loop_lag"] or {}).get("stall_stacks", [])][:3],
        }
    peer_rate = loads.get(PEER, {}).get("workflows_per_s")
    floor_rate = loads.get(FLOOR, {}).get("workflows_per_s")
    for figures in loads.values():
        figures["x_langgraph"] = _ratio(figures["workflows_per_s"], peer_rate)
        figures["x_floor"] = _ratio(figures["workflows_per_s"], floor_rate)
        figures["p99_over_p50"] = _ratio(figures["p99_s"], figures["p50_s"])
        settled = figures["settled_rss_total"]
        figures["settled_growth"] = settled[-1] - settled[0]
    summary = {"graphs": list(graphs.values()), "loads": loads}
    summary["targets"] = targets(summary)
    return summary


def _growth(first: dict[str, int], last: dict[str, int]) -> dict[str, int]:
    growth = {k: last.get(k, 0) - first.get(k, 0) for k in {*first, *last}}
    return dict(sorted(growth.items(), key=lambda kv: -abs(kv[1])))


def _graph(summary: dict[str, Any], prefix: str) -> dict[str, Any]:
    return next((g for g in summary["graphs"] if g["label"].startswith(prefix)), {"engines": {}})


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 4's targets, judged on this run (None = not measured in this run)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: Any, met: bool | None, note: str = "") -> None:
        out.append({"target": name, "value": value, "met": met, "note": note})

    fan = _graph(summary, "fan-out-500 @200")["engines"]
    for engine in ("sesame-ray", "sesame-http"):
        x = fan.get(engine, {}).get("x_critical_path")
        peer = fan.get(PEER, {}).get("x_critical_path")
        add(f"fan-out 500 @200 ms ≤ 1.10× critical path ({TITLES[engine]})", x,
            x <= 1.10 if x is not None else None, f"LangGraph {peer:.2f}×" if peer else "")
    chain = _graph(summary, "chain-50 @0")["engines"]
    hop = chain.get("sesame-ray", {}).get("overhead_ms_per_hop")
    local = chain.get("sesame-local", {}).get("overhead_ms_per_hop")
    add("chain 50 @0 ms ≤ 2 ms/hop overhead through Ray", hop, hop <= 2 if hop is not None else None,
        f"in-process {local:.2f} ms/hop" if local is not None else "")
    loads = summary["loads"]
    for engine in ("sesame-ray", "sesame-http"):
        figures = loads.get(engine)
        if not figures:
            continue
        x = figures["x_langgraph"]
        add(f"load ≥ 1.5× LangGraph's workflows/s ({TITLES[engine]})", x, x >= 1.5 if x is not None else None,
            f"{figures['workflows_per_s']:.0f} wf/s")
        ratio = figures["p99_over_p50"]
        add(f"load p99 ≤ 3× p50 ({TITLES[engine]})", ratio, ratio <= 3 if ratio is not None else None)
    http = loads.get("sesame-http")
    if http:
        peak = max(http["peak_rss_cluster"]) / GIB
        add("Ray cluster ≤ 3 GiB RSS under load (Sesame HTTP)", peak, peak <= 3)
        growth = http["settled_growth"] / MIB
        add("no RSS growth across repeated loads (settled, MiB)", growth,
            growth <= 0.05 * http["settled_rss_total"][0] / MIB)
        add("replica event loop never stalls ≥ 100 ms under load", http["loop_stalls"], http["loop_stalls"] == 0,
            f"worst lag bucket per load: {', '.join(str(w) for w in http['loop_worst_lag'])}")
    return out


_IDLE = ("wait", "select", "_wait_for_tstate_lock", "poll", "accept", "get", "sleep", "readline", "_worker",
         "run", "main_loop")  # Thread.run / Ray's main_loop as innermost frame: in C, not in Python


def _short(frame: str) -> str:
    """A frame without its install prefix: `graph/validation.py:83 f`, `httpcore2/_utils.py:47 g`."""
    for prefix in (r"^.*site-packages/", r"^.*/lib/python3\.\d+/", r"^/work/[^/]+/"):
        shortened = re.sub(prefix, "", frame)
        if shortened != frame:
            return shortened
    return frame


def _idle(frame: str) -> bool:
    return frame.rsplit(" ", 1)[-1] in _IDLE


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if value is not None else "—"


def tables(summary: dict[str, Any], engines: list[str]) -> str:
    heads = [TITLES.get(e, e) for e in engines]
    lines = ["", "End-to-end ÷ critical path (median) — in parentheses ÷ LangGraph's time", "",
             "| graph | nodes | critical path s | " + " | ".join(heads) + " |",
             "|---|---:|---:|" + "---:|" * len(engines)]
    for g in summary["graphs"]:
        cells = []
        for e in engines:
            f = g["engines"].get(e)
            cells.append("—" if not f else f"{_num(f['x_critical_path'])}× ({_num(f['x_langgraph'])})"
                         if f["x_critical_path"] is not None else f"{f['median_s'] * 1000:.1f} ms ({_num(f['x_langgraph'])})")
        lines.append(f"| {g['label']} | {g['nodes']} | {g['critical_path_s']:.2f} | " + " | ".join(cells) + " |")

    lines += ["", "End-to-end ÷ the plain-asyncio floor (median seconds in brackets)", "",
              "| graph | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(engines)]
    for g in summary["graphs"]:
        cells = []
        for e in engines:
            f = g["engines"].get(e)
            cells.append("—" if not f else f"{_num(f['x_floor'])}× [{f['median_s']:.3f}]")
        lines.append(f"| {g['label']} | " + " | ".join(cells) + " |")

    chains = [g for g in summary["graphs"] if g["name"].startswith("chain") and not g["llm_latency_ms"]]
    if chains:
        lines += ["", "Chain per hop at 0 ms: total ms/hop · engine overhead ms/hop (over the floor) · ×LG", "",
                  "| graph | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(engines)]
        for g in chains:
            cells = []
            for e in engines:
                f = g["engines"].get(e)
                cells.append("—" if not f else f"{f['ms_per_hop']:.2f} · {_num(f['overhead_ms_per_hop'])} · "
                             f"{_num(f['x_langgraph'])}")
            lines.append(f"| {g['label']} | " + " | ".join(cells) + " |")

    lines += ["", "Stub CPU during the graph runs (cores busy: OpenAI + Composio stubs / engine's own processes)", "",
              "| graph | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(engines)]
    for g in summary["graphs"]:
        cells = ["—" if not (f := g["engines"].get(e)) else f"{f['stub_cores']:.2f} / {f['engine_cores']:.2f}"
                 for e in engines]
        lines.append(f"| {g['label']} | " + " | ".join(cells) + " |")

    loads = summary["loads"]
    if loads:
        any_load = next(iter(loads.values()))
        lines += ["", f"Load: {any_load['concurrency']} concurrent clients, {any_load['total']} "
                  f"{any_load['graph']} workflows per load, {any_load['loads']} loads (medians over loads)", "",
                  "| engine | workflows/s (×LG) | p50 ms | p99 ms | p99/p50 | failed | peak RSS GiB per load "
                  "(cluster / +driver) | settled growth MiB | CPU ms/workflow | cores engine / stubs | "
                  "loop p99 · worst lag · stalls |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|"]
        for e in engines:
            f = loads.get(e)
            if not f:
                continue
            rss = ", ".join(f"{c / GIB:.2f} / {t / GIB:.2f}" for c, t in zip(f["peak_rss_cluster"], f["peak_rss_total"]))
            lag = f"{' '.join(str(x) for x in f['loop_p99_lag'])} · {' '.join(str(x) for x in f['loop_worst_lag'])} · {f['loop_stalls']}"
            lines.append(f"| {TITLES.get(e, e)} | {f['workflows_per_s']:.0f} ({_num(f['x_langgraph'])}) | "
                         f"{f['p50_s'] * 1000:.0f} | {f['p99_s'] * 1000:.0f} | {_num(f['p99_over_p50'])} | "
                         f"{f['failed']} | {rss} | {f['settled_growth'] / MIB:+.0f} | "
                         f"{f['cpu_ms_per_workflow']:.1f} | {f['engine_cores']:.2f} / {f['stub_cores']:.2f} | {lag} |")

    growing = [(e, f["settled_growth_by_process"]) for e, f in loads.items() if f.get("settled_growth_by_process")]
    if growing:
        lines += ["", "Settled RSS growth from the first load to the last, by process (MiB)", ""]
        for engine, growth in growing:
            lines.append(f"- {TITLES.get(engine, engine)}: " + ", ".join(
                f"{k} {v / MIB:+.0f}" for k, v in list(growth.items())[:6]))

    stalls = [(e, s) for e in engines for s in loads.get(e, {}).get("stall_stacks", [])[:2]]
    if stalls:
        lines += ["", "Event-loop stalls (a 10 ms beat ≥ 100 ms late) during the loads: the loop thread's innermost "
                  "frames, and the other threads busy in Python at that moment", ""]
        for engine, stall in stalls:
            busy = {name: _short(frames[-1]) for name, frames in stall.get("other_threads", {}).items()
                    if frames and not _idle(frames[-1])}
            lines.append(f"- {TITLES.get(engine, engine)}: {stall['overdue_ms']:.0f} ms late in "
                         f"{' ← '.join(_short(f) for f in reversed(stall['stack'][-2:])) or '(no Python frame)'}; busy threads: "
                         f"{'; '.join(f'{n}: {f}' for n, f in busy.items()) or 'none'}")

    lines += ["", "Targets (issue 4)", "", "| target | value | met | note |", "|---|---:|---|---|"]
    for t in summary["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        value = t["value"] if not isinstance(t["value"], float) else f"{t['value']:.2f}"
        lines.append(f"| {t['target']} | {value} | {met} | {t['note']} |")
    return "\n".join(lines)


def profiles(results: dict[str, dict[str, Any]], top: int = 6) -> str:
    """The py-spy summaries of a `--profile` run: per engine and process, where samples fell."""
    lines: list[str] = []
    for engine, result in results.items():
        profiled = result.get("profile")
        if not profiled:
            continue
        load = result["profiled_load"]
        lines += ["", f"Profile of {TITLES.get(engine, engine)} during one extra load "
                  f"({load['workflows_per_s']:.0f} workflows/s under py-spy; CPU ms per workflow by process: "
                  + ", ".join(f"{k} {v / max(load['succeeded'], 1) * 1000:.1f}"
                              for k, v in load["cpu"]["by_process"].items() if v > 0.05) + ")"]
        for process, summary in profiled.items():
            areas = ", ".join(f"{k} {v}%" for k, v in list(summary["self_by_area_pct"].items())[:top])
            files = ", ".join(f"{k} {v}%" for k, v in list(summary["inclusive_by_sesame_file_pct"].items())[:top])
            lines.append(f"- {process} ({summary['samples']} samples): self by area: {areas}; "
                         f"inclusive in Sesame files: {files or 'none'}")
    return "\n".join(lines)
