"""What a newcomer starts from, for the tests that run the project's commands as written.

* a fresh home (``HOME`` in a temporary folder, ``THRIFTY_HOME`` unset, so ``~/.thrifty`` is new);
* small slices of the shared data, written to a temporary folder at test time (never into the project);
* the project's ``.venv/bin`` first on ``PATH``;
* the loopback fake provider standing in for OpenAI, Anthropic and Together: the shipped sample config
  (``examples/thrifty.yaml``) is pointed at it by ``THRIFTY_SERVE_UPSTREAMS__*`` variables, and each
  provider's key variable holds a fake key the fake accepts. No file is edited.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
FAKE_KEYS = {
    "OPENAI_API_KEY": "sk-fake-newcomer-openai-0001",
    "ANTHROPIC_API_KEY": "sk-ant-fake-newcomer-0001",
    "TOGETHER_API_KEY": "tg-fake-newcomer-0001",
}


def slice_outcomes(src: Path, dst: Path, per_task: int, skip: int = 0) -> Path:
    """The rows of ``per_task`` prompts of each task of ``src`` (after the first ``skip`` of each), as Parquet."""
    frame = pd.read_parquet(src)
    prompts = frame.drop_duplicates("prompt_id")[["task", "prompt_id"]]
    picked = prompts.groupby("task", sort=False).nth(list(range(skip, skip + per_task)))["prompt_id"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    frame[frame["prompt_id"].isin(set(picked))].reset_index(drop=True).to_parquet(dst)
    return dst


def sliced_data_dir(data_dir: Path, dst: Path, per_task: int) -> Path:
    """A folder laid out like ``shared/data`` (``outcomes/*.parquet``, ``prices.csv``) holding slices of it."""
    for path in sorted((data_dir / "outcomes").glob("*.parquet")):
        slice_outcomes(path, dst / "outcomes" / path.name, per_task)
    shutil.copy(data_dir / "prices.csv", dst / "prices.csv")
    return dst


def newcomer_env(home: Path, data_dir: Path, fake_url: str) -> dict[str, str]:
    """The environment of a fresh shell with the project installed and the fake provider as every upstream."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THRIFTY_", "MLFLOW_"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        THRIFTY_DATA_DIR=str(data_dir),
        MPLBACKEND="Agg",
        THRIFTY_SERVE_UPSTREAMS__OPENAI__BASE_URL=f"{fake_url}/v1",
        THRIFTY_SERVE_UPSTREAMS__ANTHROPIC__BASE_URL=fake_url,
        THRIFTY_SERVE_UPSTREAMS__OPENAI_COMPATIBLE__BASE_URL=f"{fake_url}/v1",
        **FAKE_KEYS,
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Background:
    """A command (``thrifty serve …``) run by bash in the background, in its own process group."""

    def __init__(self, command: str, *, cwd: Path, env: dict[str, str], log: Path):
        self.command = command
        self.log = log
        self._out = log.open("wb")
        # `exec env …`: the server replaces bash, and a leading VAR=value assignment still applies
        self.proc = subprocess.Popen(["bash", "-c", f"exec env {command}"], cwd=cwd, env=env, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")

    def wait_healthy(self, url: str, timeout: float = 600.0, path: str = "/healthz") -> None:
        """Until ``url`` + ``path`` answers 200; fails with the server's output if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"`{self.command}` exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{url}{path}", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"`{self.command}` did not become healthy in {timeout:.0f} s:\n{self.output()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM to the process group it started (the server drains, then exits); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._out.close()
        return self.proc.returncode
