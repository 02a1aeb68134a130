"""Part 6 — replicas: two ``thrifty serve`` processes on one PostgreSQL store vs one replica on SQLite.

Against the fake upstream of ``bench/gateways.py`` (20 ms), in one run:

``direct``       the load generator talks to the upstream itself (the baseline of added latency)
``sqlite x1``    one replica, SQLite store (the default deployment, as in the gateway benchmark)
``postgres x1``  one replica, PostgreSQL store (what the server store costs alone)
``postgres x2``  two replicas sharing one PostgreSQL store; the load generator's concurrent loops alternate
                 between them (at c=50: 25 each)

Each configuration gets a new empty store and is measured at concurrency 1 and 50, JSON. After it, the
store's decisions are counted against the requests the load generator sent (warm-up and the first
request included): ``lost = sent - stored`` must be 0, and the upstream's own counter must agree.

PostgreSQL is a throwaway server (``tests/postgres_server.py``) with its default durability (fsync on,
``synchronous_commit=on``: a record is flushed to PostgreSQL's WAL before its answer's last byte).
Pinning as in ``gateways.py``: every server (the thrifty replicas, PostgreSQL, the upstream) on one CPU,
the load generator on the other. On this 2-core machine the pair therefore shares the one core a single
replica has: the numbers show what sharing one PostgreSQL store costs, not scale-out, which needs a
core (or a host) per replica. CPU used by other processes during each cell is recorded (shared machine).

    python -m bench.replicas [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench import hooks
from bench.common import ROOT, WORK, CpuWindow, fmt, log, machine_info, md_table, pinning, free_port, write_json
from bench.gateways import (
    HOST,
    LIMITS,
    Server,
    first_request,
    prompts_file,
    run_loadgen,
    serve_router,
    start_upstream,
    upstream_count,
    wait_ready,
)

CONFIGS = (("sqlite", 1), ("postgres", 1), ("postgres", 2))
CELLS = ((1, False), (50, False))


def config_name(backend: str, replicas: int) -> str:
    return f"{backend} x{replicas}"


class Postgres:
    """The benchmark's PostgreSQL server, pinned with the other servers."""

    def __init__(self, cpus):
        from tests.postgres_server import start

        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, set(cpus))  # the server's processes inherit the servers' CPU
        try:
            self.server = start(durable=True)
        finally:
            os.sched_setaffinity(0, mask)
        self.n = 0

    def new_database(self) -> str:
        self.n += 1
        return self.server.create_database(f"bench_{os.getpid()}_{self.n}")

    def cpu_seconds(self) -> float | None:
        import psutil

        try:
            pid = int((self.server.directory / "data" / "postmaster.pid").read_text().split()[0])
            p = psutil.Process(pid)
            total = sum(p.cpu_times()[:2])
            for c in p.children(recursive=True):
                try:
                    total += sum(c.cpu_times()[:2])
                except psutil.Error:
                    pass
            return total
        except Exception:  # noqa: BLE001 - informational
            return None

    def stop(self) -> None:
        self.server.stop()


def stored(store_url: str) -> int:
    from models.store import open_store

    with open_store(store_url, create=False) as store:
        return store.count()


def measure(backend: str, replicas: int, upstream: Server, upstream_base: str, postgres: Postgres | None, pin, limits,
            prompts) -> dict:
    name = config_name(backend, replicas)
    row: dict = {"config": name, "backend": backend, "replicas": replicas, "cells": {}}
    servers: list[Server] = []
    try:
        workdir = WORK / "replicas"
        router_path, models, prices = serve_router(WORK / "serve")
        store_url = postgres.new_database() if postgres is not None else None
        config = hooks.write_serve_config(workdir, upstream_base_url=upstream_base + "/v1", router_path=router_path,
                                          models=models, prices=prices, store_url=store_url)
        store_url = store_url or str(workdir / "outcomes.db")
        urls = []
        for k in range(replicas):
            port = free_port()
            server = Server(f"replica-{backend}-{k}", hooks.serve_command(config, HOST, port, 1), cpus=pin["server_cpus"],
                            env=hooks.serve_env(workdir))
            servers.append(server)
            row.setdefault("ready_s", []).append(wait_ready(server, f"http://{HOST}:{port}", hooks.SERVE_READY_PATHS, 180))
            urls.append(f"http://{HOST}:{port}/v1/chat/completions")
        before = upstream_count(upstream_base)
        sent = 0
        for url in urls:
            row.setdefault("first_request", []).append(first_request(url, hooks.SERVE_REQUEST_MODEL, prompts))
            sent += 1
        for conc, stream in CELLS:
            key = f"c{conc}_json"
            own0 = [s.cpu_seconds() for s in (*servers, upstream)] + [postgres.cpu_seconds() if postgres else 0.0]
            window = CpuWindow()
            r = run_loadgen(urls, hooks.SERVE_REQUEST_MODEL, conc, stream, limits[conc], pin["loadgen_cpus"], prompts)
            own1 = [s.cpu_seconds() for s in (*servers, upstream)] + [postgres.cpu_seconds() if postgres else 0.0]
            own = sum(b - a for a, b in zip(own0, own1) if a is not None and b is not None)
            r["interference"] = window.close(own)
            thrifty_cpu = [b - a for a, b in zip(own0[:replicas], own1[:replicas]) if a is not None and b is not None]
            r["thrifty_cpu_ms_per_request"] = sum(thrifty_cpu) * 1000 / max(1, r["requests"] + limits[conc][2])
            sent += r["requests"] + limits[conc][2]
            row["cells"][key] = r
            log(f"  {name:12s} {key:8s} ok {r['ok']:5d} err {r['errors']:3d}  {r['throughput_rps']:7.1f} req/s  "
                f"p50 {fmt(r['latency_ms'] and r['latency_ms']['p50'])} ms  p99 {fmt(r['latency_ms'] and r['latency_ms']['p99'])} ms"
                f"  [other procs {r['interference']['other_cores']:.2f} cores]")
        for server in servers:
            server.stop()  # graceful: every record in flight is written before the count
        row["sent"] = sent
        row["upstream_requests"] = upstream_count(upstream_base) - before
        row["stored"] = stored(store_url)
        row["lost"] = sent - row["stored"]
        row["status"] = "ok"
        log(f"  {name:12s} sent {sent}  stored {row['stored']}  lost {row['lost']}  upstream {row['upstream_requests']}")
    except Exception as exc:  # noqa: BLE001 - one failing configuration must not sink the others
        row.update(status="failed", reason=str(exc)[-3000:])
        log(f"  {name}: FAILED {str(exc)[:500]}")
    finally:
        for server in servers:
            server.stop()
        row["logs"] = [str(s.log_path.relative_to(ROOT)) for s in servers]
    return row


def measure_direct(upstream: Server, upstream_base: str, pin, limits, prompts) -> dict:
    row: dict = {"config": "direct", "cells": {}, "status": "ok"}
    for conc, stream in CELLS:
        cpu0, window = upstream.cpu_seconds(), CpuWindow()
        r = run_loadgen(upstream_base + "/v1/chat/completions", "fake", conc, stream, limits[conc], pin["loadgen_cpus"], prompts)
        cpu1 = upstream.cpu_seconds()
        r["interference"] = window.close(cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else 0.0)
        row["cells"][f"c{conc}_json"] = r
        log(f"  direct       c{conc}_json  {r['throughput_rps']:7.1f} req/s  p50 {fmt(r['latency_ms']['p50'])} ms")
    return row


def run(quick: bool = False) -> dict:
    pin = pinning()
    limits = LIMITS["quick" if quick else "full"]
    prompts = prompts_file()
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        os.sched_setaffinity(0, set(pin["loadgen_cpus"]))
    except OSError:
        pass
    upstream, upstream_base = start_upstream(pin["server_cpus"])
    postgres = None
    rows = []
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        postgres = Postgres(pin["server_cpus"])
        rows.append(measure_direct(upstream, upstream_base, pin, limits, prompts))
        for backend, replicas in CONFIGS:
            log(f"replicas config {config_name(backend, replicas)}")
            rows.append(measure(backend, replicas, upstream, upstream_base, postgres if backend == "postgres" else None,
                                pin, limits, prompts))
    finally:
        upstream.stop()
        if postgres is not None:
            postgres.stop()
    return {
        "part": "replicas",
        "quick": quick,
        "elapsed_s": time.perf_counter() - t0,
        "pinning": pin,
        "limits": {str(k): {"requests": v[0], "duration_s": v[1], "warmup": v[2]} for k, v in limits.items()},
        "postgres": "throwaway server, default durability (fsync on, synchronous_commit on)",
        "loadavg_1m": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }


def table(result: dict) -> str:
    rows = result["rows"]
    direct = next((r for r in rows if r["config"] == "direct"), None)
    base = next((r for r in rows if r["config"] == "sqlite x1" and r.get("status") == "ok"), None)

    def added(r, key, q):
        try:
            return r["cells"][key]["latency_ms"][q] - direct["cells"][key]["latency_ms"][q]
        except (KeyError, TypeError):
            return None

    out = []
    for r in rows:
        if r["config"] == "direct":
            continue
        if r.get("status") != "ok":
            out.append([r["config"], r.get("status")] + ["–"] * 10)
            continue
        c50 = r["cells"]["c50_json"]
        ratio = c50["throughput_rps"] / base["cells"]["c50_json"]["throughput_rps"] if base else None
        other = max(c.get("interference", {}).get("other_cores", 0.0) for c in r["cells"].values())
        out.append([
            r["config"], "ok",
            *(None if (v := added(r, key, q)) is None else f"{v:+.2f}" for key in ("c1_json", "c50_json") for q in ("p50", "p99")),
            f"{c50['throughput_rps']:.0f}", None if ratio is None else f"{ratio:.2f}",
            f"{c50['thrifty_cpu_ms_per_request']:.2f}", f"{r['sent']} / {r['stored']} / {r['lost']}",
            sum(c["errors"] for c in r["cells"].values()), f"{other:.2f}",
        ])
    head = ["config", "status", "c1 +p50", "c1 +p99", "c50 +p50", "c50 +p99", "c50 req/s", "vs sqlite x1",
            "CPU ms/req", "sent / stored / lost", "errors", "other cores"]
    d = ""
    if direct:
        d = (f"\n\nDirect (baseline) p50/p99: c1 {direct['cells']['c1_json']['latency_ms']['p50']:.2f}/"
             f"{direct['cells']['c1_json']['latency_ms']['p99']:.2f} ms, c50 {direct['cells']['c50_json']['throughput_rps']:.0f} req/s.")
    notes = "".join(f"\n- {r['config']}: {r.get('status')} — {r.get('reason', '')[:300]}" for r in rows if r.get("status") != "ok")
    load = result.get("loadavg_1m")
    if load:
        d += f" Machine load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end (2 cores)."
    return (md_table(head, out) + "\n\nms added over direct (JSON); x2 = two replicas on one PostgreSQL store, the concurrent "
            "loops alternating between them; every server (replicas, PostgreSQL, upstream) on CPU "
            f"{result['pinning']['server_cpus']}, load generator on CPU {result['pinning']['loadgen_cpus']}, so the pair shares "
            "the one core a single replica has; CPU ms/req = the thrifty processes' CPU per request at c=50 (PostgreSQL's "
            "own not included); lost = requests sent − decisions stored; other cores = most CPU used by processes outside "
            "the benchmark during any cell (shared machine)." + d + notes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.quick)
    result["machine"] = machine_info()
    write_json("replicas", result)
    print(table(result))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
