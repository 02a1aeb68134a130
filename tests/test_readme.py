"""The README is executed: every ```bash block runs as written, so a README command that fails is a failing test.

How the blocks run (see ``tests/newcomer.py`` for the environment):

* in document order, each logical command line (``\\`` continuations joined) by ``bash -o pipefail``, in one
  shared newcomer environment: a fresh ``HOME`` (``THRIFTY_HOME`` unset), ``.venv/bin`` first on ``PATH``,
  ``$THRIFTY_DATA_DIR`` holding slices of ``../shared/data``, and a working folder where the files the README
  names as "your logs" (``a.parquet``, ``logs/*.parquet``, ``prices.csv``, … see :data:`YOUR_FILES`) are slices
  of RouterBench, the main job's data; ``scripts/`` and ``examples/`` are linked into it;
* each command must exit 0;
* ``thrifty serve …`` (and ``mlflow models serve …``, probed on ``/health``) runs in the background, is probed on ``/healthz`` and keeps serving the blocks after it
  (it is stopped at the end, or when another one starts). Its upstreams are the loopback fake provider (the
  sample config's base URLs overridden by variables, fake keys set). Once it is up, the harness plays "your
  app": routed requests with feedback, the traffic the README's retrain section presupposes;
* port 8000 in a command becomes a free port (other servers may hold 8000 on a shared machine);
* a block right after ``<!-- not-run: reason -->`` is not run; the test of exclusions reports each one.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.newcomer import ROOT, Background, free_port, newcomer_env, slice_outcomes, sliced_data_dir

README = ROOT / "README.md"
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->\s*$")
SERVE = re.compile(r"^(?:\S+=\S+\s+)*(?:opentelemetry-instrument\s+)?(?:\.venv/bin/)?thrifty\s+serve\b")
MLFLOW_SERVE = re.compile(r"^(?:\S+=\S+\s+)*mlflow\s+models\s+serve\b")  # the registered router behind MLflow's scoring server
README_PORT = "8000"
MAX_EXCLUSIONS = 3  # exclusions must stay rare: each one is a command nobody checks

# The files the README's examples name as the reader's own: (prompts per task, prompts skipped per task) of
# routerbench-subset, the data the main job trains on, so every router the README registers serves the same
# 11 models as the shipped sample catalog.
YOUR_FILES = {
    "a.parquet": (12, 0),
    "b.parquet": (12, 12),
    "logs/part-0.parquet": (12, 24),
    "logs/part-1.parquet": (12, 36),
    "bench.parquet": (12, 48),
    "heldout.parquet": (12, 60),
}
DATA_SLICE = 15  # prompts per task of every shared dataset under $THRIFTY_DATA_DIR
APP_REQUESTS = 40  # routed requests (with feedback) "your app" sends once a server is up


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    commands: tuple[str, ...]
    not_run: str | None  # the reason, for a block marked not-run


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start, body = i, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = NOT_RUN.search(previous.strip())
            blocks.append(Block(start + 1, tuple(_commands(body)), marker.group(1) if marker else None))
        i += 1
    return blocks


def _commands(body: list[str]) -> list[str]:
    commands, pending = [], ""
    for raw in body:
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if line.strip() and not line.strip().startswith("#"):
            commands.append(line.strip())
    return commands


BLOCKS = readme_blocks(README.read_text())
COMMANDS = [(b.line, c) for b in BLOCKS if b.not_run is None for c in b.commands]


class Session:
    """The shared newcomer environment, the running server and its fake upstream."""

    def __init__(self, tmp: Path, data_dir: Path, fake_url: str):
        self.tmp = tmp
        self.work = tmp / "work"
        self.work.mkdir()
        for name in ("scripts", "examples"):
            (self.work / name).symlink_to(ROOT / name)
        rb = data_dir / "outcomes" / "routerbench-subset.parquet"
        for name, (per_task, skip) in YOUR_FILES.items():
            slice_outcomes(rb, self.work / name, per_task, skip)
        (self.work / "prices.csv").write_bytes((data_dir / "prices.csv").read_bytes())
        self.data = sliced_data_dir(data_dir, tmp / "data", DATA_SLICE)
        self.env = newcomer_env(tmp / "home", self.data, fake_url)
        self.port = str(free_port())
        self.server: Background | None = None
        self.prompts = pd.read_parquet(rb).drop_duplicates("prompt_id")["prompt"].tolist()[:APP_REQUESTS]
        self.outcomes = pd.read_parquet(rb, columns=["prompt", "model", "success"])

    def run(self, command: str, line: int) -> None:
        command = re.sub(rf"\b{README_PORT}\b", self.port, command)
        if SERVE.match(command) or MLFLOW_SERVE.match(command):  # else it would listen where no probe looks
            assert f"--port {self.port}" in command, f"README line {line}: a server command needs --port {README_PORT}"
        if SERVE.match(command):
            self.stop()
            self.server = Background(command, cwd=self.work, env=self.env, log=self.tmp / f"serve-{line}.log")
            self.server.wait_healthy(f"http://127.0.0.1:{self.port}")
            self.app_traffic()
            return
        if MLFLOW_SERVE.match(command):
            self.stop()
            self.server = Background(command, cwd=self.work, env=self.env, log=self.tmp / f"serve-{line}.log")
            self.server.wait_healthy(f"http://127.0.0.1:{self.port}", path="/health")
            return
        import subprocess

        proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (
            f"README line {line}: `{command}` exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-4000:]}"
        )

    def app_traffic(self) -> None:
        """Routed requests, each rated with the logged success of the model the router chose for its prompt."""
        url, rng = f"http://127.0.0.1:{self.port}", random.Random(0)
        with httpx.Client(base_url=url, timeout=60) as client:
            for prompt in self.prompts:
                r = client.post("/v1/chat/completions", json={"model": "thrifty", "messages": [{"role": "user", "content": prompt}]})
                assert r.status_code == 200, r.text
                model = r.headers["x-thrifty-model"]
                logged = self.outcomes[(self.outcomes.prompt == prompt) & (self.outcomes.model == model)]["success"]
                success = float(logged.iloc[0]) if len(logged) else float(rng.random() < 0.5)
                f = client.post("/v1/feedback", json={"decision_id": r.headers["x-thrifty-decision-id"], "success": success, "source": "app"})
                assert f.status_code == 200, f.text

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="module")
def session(tmp_path_factory, data_dir):
    from tests.fakes.provider import FakeProvider
    from tests.fakes.server import ThreadedServer
    from tests.newcomer import FAKE_KEYS

    fake = ThreadedServer(FakeProvider(api_keys=set(FAKE_KEYS.values())).app).start()
    s = Session(tmp_path_factory.mktemp("readme"), data_dir, fake.url)
    yield s
    s.stop()
    fake.stop()


def test_readme_has_command_blocks_to_run():
    assert len(COMMANDS) >= 10
    assert any("scripts/main.sh" in c for _, c in COMMANDS)
    assert any(SERVE.match(c) for _, c in COMMANDS)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(("line", "command"), COMMANDS, ids=[f"L{line}:{c[:60]}" for line, c in COMMANDS])
def test_readme_command(session, line, command):
    session.run(command, line)


def test_readme_exclusions_are_rare_and_justified():
    excluded = [b for b in BLOCKS if b.not_run is not None]
    for block in excluded:
        assert len(block.not_run) >= 10, f"README line {block.line}: a not-run marker must say why"
        warnings.warn(f"README block at line {block.line} is not run ({block.not_run}): {'; '.join(block.commands)}")
    assert len(excluded) <= MAX_EXCLUSIONS


def test_readme_says_where_the_command_lives_and_documents_base_urls():
    import yaml

    from serving.config import ServingConfig

    text = README.read_text()
    assert ".venv/bin" in text and "source .venv/bin/activate" in text
    configs = re.findall(r"```yaml\n(.*?)```", text, re.S)
    serve_config = next(yaml.safe_load(c) for c in configs if "upstreams:" in c)
    assert all(u.get("base_url") for u in serve_config["upstreams"].values())
    ServingConfig(**serve_config)  # the documented example is a valid config, key for key
