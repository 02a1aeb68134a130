"""Part 4 — memory stability: the thrifty server's RSS over a sustained load at concurrency 50.

Starts the fake upstream and ``thrifty serve`` (one worker, on the server
core), samples the RSS of the server's process tree every second while idle,
during a load of concurrency 50 (25 non-streaming + 25 streaming closed loops,
two load-generator processes on the other core) for 5 minutes (``--quick``:
30 s), then for 30 s after the load stops.

Reported: idle start, RSS after the first 10% of the load (warm), peak,
plateau (median of the last quarter of the load), slope over the second half
of the load (MiB/min, least squares), and end (median of the last 10 s of the
cool-down). Verdicts, with the thresholds stated in the results:

* plateaus — the second-half slope is below ``max(1 MiB/min, 0.5 % of warm RSS per min)``;
* returns  — end ≤ starting level + ``max(16 MiB, 5 %)``, where the starting level
  is the RSS after one request: lazy loads on the first request (thrifty: the
  o200k tokenizer, ~150 MiB) are not load-dependent growth. The idle RSS
  before any request is reported too.

    python -m bench.memory [--quick] [--target thrifty|passthrough|litellm|routellm]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from bench.common import BENCH, PROJECT_PY, ROOT, log, machine_info, md_table, pinning, write_json
from bench.gateways import Unavailable, first_request, prompts_file, start_config, start_upstream

DURATION_S = {"full": 300.0, "quick": 30.0}
COOLDOWN_S = 30.0
IDLE_S = 5.0


class RssSampler(threading.Thread):
    def __init__(self, server, interval: float = 1.0):
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.samples: list[tuple[float, float, str]] = []  # (t, MiB, phase)
        self.phase = "idle"
        self.t0 = time.perf_counter()
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            rss = self.server.rss_mib()
            if rss is not None:
                self.samples.append((time.perf_counter() - self.t0, rss, self.phase))
            self.stop_event.wait(self.interval)


def _loadgen(url: str, model: str, concurrency: int, stream: bool, duration: float, cpus, prompts) -> subprocess.Popen:
    cmd = [str(PROJECT_PY), str(BENCH / "loadgen.py"), "--url", url, "--model", model, "--concurrency", str(concurrency),
           "--requests", "1000000", "--duration", str(duration), "--warmup", "0", "--max-tokens", "20",
           "--prompts", str(prompts), "--cpus", ",".join(map(str, cpus))]
    if stream:
        cmd.append("--stream")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def analyse(samples, duration: float, after_first: float | None = None) -> dict:
    import numpy as np

    def phase(name):
        return [(t, m) for t, m, p in samples if p == name]

    idle, load, cool = phase("idle"), phase("load"), phase("cooldown")
    if not load:
        return {"error": "no samples under load"}
    t_load0 = load[0][0]
    lt = np.array([t for t, _ in load]) - t_load0
    lm = np.array([m for _, m in load])
    start = float(np.median([m for _, m in idle])) if idle else float(lm[0])
    warm_mask = lt >= 0.1 * duration
    warm = float(lm[warm_mask][0]) if warm_mask.any() else float(lm[0])
    plateau = float(np.median(lm[lt >= 0.75 * duration])) if (lt >= 0.75 * duration).any() else float(lm[-1])
    half = lt >= 0.5 * duration
    slope = float(np.polyfit(lt[half] / 60.0, lm[half], 1)[0]) if half.sum() >= 3 else None
    end = float(np.median([m for t, m in cool if t >= cool[-1][0] - 10])) if cool else None
    base = after_first if after_first is not None else warm
    slope_limit = max(1.0, 0.005 * warm)
    return_limit = base + max(16.0, 0.05 * base)
    return {
        "start_mib": start,
        "after_first_request_mib": after_first,
        "warm_mib": warm,
        "peak_mib": float(lm.max()),
        "plateau_mib": plateau,
        "slope_second_half_mib_per_min": slope,
        "end_mib": end,
        "end_minus_start_mib": None if end is None else end - start,
        "end_minus_warm_mib": None if end is None else end - warm,
        "end_minus_after_first_mib": None if end is None or after_first is None else end - after_first,
        "plateaus": slope is not None and slope < slope_limit,
        "returns": end is not None and end <= return_limit,
        "thresholds": {"slope_mib_per_min_below": slope_limit, "end_mib_at_most": return_limit},
    }


def run(quick: bool = False, target: str = "thrifty") -> dict:
    pin = pinning()
    duration = DURATION_S["quick" if quick else "full"]
    prompts = prompts_file()
    upstream, upstream_base = start_upstream(pin["server_cpus"])
    server = None
    result = {"part": "memory", "quick": quick, "target": target, "duration_s": duration, "cooldown_s": COOLDOWN_S,
              "concurrency": {"json": 25, "stream": 25}, "pinning": pin}
    try:
        try:
            server, url, model, info = start_config(target, upstream_base, pin["server_cpus"])
        except Unavailable as exc:
            result.update(status="not available yet", reason=str(exc))
            log(f"memory: {exc}")
            return result
        if server is None:
            raise ValueError("memory needs a gateway, not 'direct'")
        result["server"] = info
        sampler = RssSampler(server)
        sampler.start()
        time.sleep(IDLE_S)
        result["idle_mib"] = server.rss_mib()
        result["first_request"] = first_request(url, model, prompts)  # lazy loads happen here, not under load
        time.sleep(1.5)
        result["after_first_mib"] = server.rss_mib()
        log(f"memory: {target} under load for {duration:.0f} s (RSS every second)")
        sampler.phase = "load"
        procs = [_loadgen(url, model, 25, False, duration, pin["loadgen_cpus"], prompts),
                 _loadgen(url, model, 25, True, duration, pin["loadgen_cpus"], prompts)]
        outs = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=duration + 120)
            if p.returncode != 0:
                raise RuntimeError(f"loadgen failed: {stderr[-1500:]}")
            outs.append(json.loads(stdout))
        sampler.phase = "cooldown"
        log(f"memory: cool-down {COOLDOWN_S:.0f} s")
        time.sleep(COOLDOWN_S)
        sampler.stop_event.set()
        sampler.join(3)
        result["load"] = [{k: o[k] for k in ("stream", "concurrency", "requests", "ok", "errors", "error_kinds", "throughput_rps", "latency_ms")}
                          for o in outs]
        result["samples"] = [{"t": round(t, 2), "rss_mib": round(m, 2), "phase": p} for t, m, p in sampler.samples]
        result["analysis"] = analyse(sampler.samples, duration, result["after_first_mib"])
        result["status"] = "ok"
        a = result["analysis"]
        if "error" not in a:
            log(f"memory: start {a['start_mib']:.0f} MiB, warm {a['warm_mib']:.0f}, peak {a['peak_mib']:.0f}, plateau {a['plateau_mib']:.0f}, "
                f"end {a['end_mib']:.0f}; slope {a['slope_second_half_mib_per_min']:.2f} MiB/min")
    except Exception as exc:  # noqa: BLE001
        result.update(status="failed", reason=str(exc)[-3000:])
        log(f"memory: FAILED {str(exc)[:500]}")
    finally:
        if server:
            server.stop()
            result["log"] = str(server.log_path.relative_to(ROOT))
        upstream.stop()
    return result


def table(result: dict) -> str:
    if result.get("status") != "ok":
        return f"{result.get('target')}: {result.get('status')} — {result.get('reason', '')[:300]}"
    a = result["analysis"]
    load = result["load"]
    errors = sum(x["errors"] for x in load)
    reqs = sum(x["ok"] for x in load)
    fr = result.get("first_request", {})
    rows = [[result["target"], f"{result['duration_s']:.0f}", reqs, errors, f"{a['start_mib']:.0f}",
             "–" if a.get("after_first_request_mib") is None else f"{a['after_first_request_mib']:.0f}",
             f"{a['warm_mib']:.0f}", f"{a['peak_mib']:.0f}",
             f"{a['plateau_mib']:.0f}", f"{a['slope_second_half_mib_per_min']:+.2f}", f"{a['end_mib']:.0f}",
             "yes" if a["plateaus"] else "NO", "yes" if a["returns"] else "NO"]]
    return md_table(["server", "load s", "requests", "errors", "idle MiB", "after 1st req MiB", "warm MiB", "peak MiB", "plateau MiB",
                     "slope MiB/min", "end MiB", "plateaus", "returns"], rows) + (
        f"\n\nConcurrency 50 (25 JSON + 25 streaming); starting level = RSS after one request (lazy loads done: "
        f"the first request took {fr.get('ms', float('nan')):.0f} ms); warm = 10 % into the load; plateaus = second-half slope below "
        f"{a['thresholds']['slope_mib_per_min_below']:.1f} MiB/min; returns = end ≤ {a['thresholds']['end_mib_at_most']:.0f} MiB "
        f"(starting level + max(16 MiB, 5 %)).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 s of load instead of 5 minutes")
    ap.add_argument("--target", default="thrifty", choices=("thrifty", "passthrough", "litellm", "routellm"))
    args = ap.parse_args(argv)
    result = run(args.quick, args.target)
    result["machine"] = machine_info()
    write_json("memory" if args.target == "thrifty" else f"memory-{args.target}", result)
    print(table(result))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
