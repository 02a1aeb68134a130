"""The one command: every part of the benchmark, its JSON results, SUMMARY.md, and the README table.

    bench/run.sh                 # = bash bench/setup_peers.sh && .venv/bin/python -m bench.run_all
    .venv/bin/python -m bench.run_all [--quick] [--parts decision,gateways,memory,train,replicas,dask] [--skip-setup]
    .venv/bin/python -m bench.run_all --summary-only    # rebuild SUMMARY.md and the README table from the JSON files

Parts run one after another, each in its own process (so thread settings and
CPU pinning of one cannot leak into the next) with a time limit:

1. ``decision``  bench.decision_latency  → results/decision_latency.json
2. ``gateways``  bench.gateways          → results/gateways.json
3. ``memory``    bench.memory            → results/memory.json
4. ``train``     bench.train_scale       → results/train_scale.json
5. ``dask``      bench.train_dask        → results/train_dask.json (only when asked:
   ``bench/run.sh --parts dask``; one process vs ``--dask local:2`` at 1M and 5M rows
   takes about an hour on 2 cores)
6. ``replicas``  bench.replicas          → results/replicas.json

Then ``results/SUMMARY.md`` is written from the JSON files (machine, versions,
date, every table), printed, and copied between the result markers of
``bench/README.md``. A part that fails leaves its previous JSON out of the
summary (it is reported as failed in this run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench.common import BENCH, PROJECT_PY, RESULTS, ROOT, log, machine_info, machine_line, write_json

PARTS = {  # name -> (module, results file, time limit full / quick in seconds)
    "decision": ("bench.decision_latency", "decision_latency", 240, 120),
    "gateways": ("bench.gateways", "gateways", 600, 240),
    "memory": ("bench.memory", "memory", 480, 150),
    "train": ("bench.train_scale", "train_scale", 900, 300),
    # not in the default run (about 15 minutes on a quiet 2-core machine): bench/run.sh --parts dask
    "dask": ("bench.train_dask", "train_dask", 7200, 900),
    "replicas": ("bench.replicas", "replicas", 420, 240),
}
DEFAULT_PARTS = ("decision", "gateways", "memory", "train", "replicas")
BUDGET_S = 20 * 60
README = BENCH / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def run_part(name: str, quick: bool) -> dict:
    module, _, limit_full, limit_quick = PARTS[name]
    cmd = [str(PROJECT_PY), "-m", module] + (["--quick"] if quick else [])
    log(f"=== {name}: {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, timeout=limit_quick if quick else limit_full, stdout=subprocess.PIPE, text=True)
        status = "ok" if res.returncode == 0 else f"exit {res.returncode}"
    except subprocess.TimeoutExpired:
        status = "timeout"
    return {"part": name, "status": status, "elapsed_s": time.perf_counter() - t0}


def summary_markdown(runs: list[dict], machine: dict, quick: bool, total_s: float) -> str:
    from bench import decision_latency, gateways, memory, replicas, train_dask, train_scale

    sections = []
    tables = {
        "decision": ("1. Decision latency (in-process, one thread, warm)", decision_latency.table, "decision_latency"),
        "gateways": ("2. Gateway overhead (fake upstream, 20 ms)", gateways.table, "gateways"),
        "train": ("3. Training scale (`thrifty train`)", train_scale.table, "train_scale"),
        "memory": ("4. Memory stability (thrifty server, concurrency 50)", memory.table, "memory"),
        "dask": ("5. Training on Dask (`thrifty train` vs `--dask local:2`)", train_dask.table, "train_dask"),
        "replicas": ("6. Replicas on one PostgreSQL store vs one replica on SQLite", replicas.table, "replicas"),
    }
    ran = {r["part"]: r for r in runs}
    for part in ("decision", "gateways", "train", "memory", "dask", "replicas"):
        title, fn, fname = tables[part]
        path = RESULTS / f"{fname}.json"
        run = ran.get(part)
        if run is not None and run["status"] != "ok":
            sections.append(f"### {title}\n\nFAILED in this run ({run['status']}, {run['elapsed_s']:.0f} s); see the log above.")
            continue
        if not path.exists():
            sections.append(f"### {title}\n\nnot run.")
            continue
        data = json.loads(path.read_text())
        stamp = data.get("machine", {}).get("date", "?")
        note = "" if run is not None else f" (from an earlier run, {stamp})"
        quick_note = " — quick (smoke) run, not comparable" if data.get("quick") else ""
        sections.append(f"### {title}{note}{quick_note}\n\n{fn(data)}")
    pk = machine.get("project_packages", {})
    peers = machine.get("peer_packages", {})
    versions = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    peer_versions = ", ".join(f"{k} {v}" for k, v in peers.items() if v)
    timing = ", ".join(f"{r['part']} {r['elapsed_s']:.0f} s ({r['status']})" for r in runs)
    load = os.getloadavg()
    ran_parts = {r["part"] for r in runs} - {"setup"}
    full = ran_parts >= set(DEFAULT_PARTS)
    last_full = _read_json_file(RESULTS / "run_all_full.json")
    if full:
        budget = f"total {total_s / 60:.1f} min (budget {BUDGET_S // 60} min: {'within' if total_s <= BUDGET_S else 'OVER'})"
    else:
        budget = f"partial run ({', '.join(sorted(ran_parts)) or 'summary only'}), {total_s / 60:.1f} min" + (
            f"; last full run {last_full['total_s'] / 60:.1f} min on {last_full['machine']['date']} "
            f"(budget {BUDGET_S // 60} min: {'within' if last_full['total_s'] <= BUDGET_S else 'OVER'})" if last_full else "")
    head = (
        f"## Latest results{' (quick)' if quick else ''}\n\n"
        f"Machine: {machine_line(machine)}.\n\n"
        f"Project env: {versions}.\n\nPeer env (bench/.venv): {peer_versions or 'not installed'}.\n\n"
        f"Run: {timing + '; ' if timing else ''}{budget}. Load average at the end: {load[0]:.2f} "
        f"(the machine is shared: see `interference` in the JSON files)."
    )
    return head + "\n\n" + "\n\n".join(sections) + "\n"


def _read_json_file(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def update_readme(md: str) -> None:
    if not README.exists():
        return
    text = README.read_text()
    if START not in text or END not in text:
        return
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    README.write_text(before + START + "\n" + md + END + after)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run of every part (a few minutes)")
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated, of {list(PARTS)}")
    ap.add_argument("--skip-setup", action="store_true", help="do not run bench/setup_peers.sh")
    ap.add_argument("--no-readme", action="store_true", help="leave bench/README.md alone")
    ap.add_argument("--summary-only", action="store_true", help="rebuild SUMMARY.md (and the README) from the JSON files; run nothing")
    args = ap.parse_args(argv)
    if args.summary_only:
        md = summary_markdown([], machine_info(), False, 0.0)
        (RESULTS / "SUMMARY.md").write_text(md)
        if not args.no_readme:
            update_readme(md)
        print(md)
        return
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        sys.exit(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    t0 = time.perf_counter()
    runs = []
    if not args.skip_setup and "gateways" in parts:
        t = time.perf_counter()
        res = subprocess.run(["bash", str(BENCH / "setup_peers.sh")], cwd=ROOT)
        runs.append({"part": "setup", "status": "ok" if res.returncode == 0 else f"exit {res.returncode}", "elapsed_s": time.perf_counter() - t})
    for p in parts:
        runs.append(run_part(p, args.quick))
    total = time.perf_counter() - t0
    machine = machine_info()
    record = {"quick": args.quick, "runs": runs, "total_s": total, "budget_s": BUDGET_S, "machine": machine}
    write_json("run_all", record)
    if not args.quick and set(parts) >= set(DEFAULT_PARTS) and all(r["status"] == "ok" for r in runs):
        write_json("run_all_full", record)  # the end-to-end time the README reports
    md = summary_markdown(runs, machine, args.quick, total)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "SUMMARY.md").write_text(md)
    if not args.no_readme and not args.quick:
        update_readme(md)
    print(md)
    failed = [r for r in runs if r["status"] != "ok"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
