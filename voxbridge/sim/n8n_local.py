"""A real n8n on loopback, for the tests and `scripts/bench_agents.py` (not used by the daemon).

n8n itself is installed by `scripts/install_n8n.sh` (pinned version, cached outside the
repository). `LocalN8n` gives it its own user folder (SQLite database, settings), imports
workflow files, activates them without the UI and starts it on a free 127.0.0.1 port with
telemetry, version checks and templates off (it needs no network).

Activating without the UI (n8n 1.123): `n8n import:workflow` stores the workflows inactive and
without a `workflow_history` row; a workflow is served only when `active` is set and its
`activeVersionId` names a history row (a foreign key), so both are written to the database
before `n8n start` for every workflow file that says `"active": true`. After `/healthz` turns 200,
webhooks still answer 404 "not registered" for several seconds while workflows activate (before
that, briefly, 200 "n8n is starting up. Please wait" and 404 "Cannot POST"): `start` waits until
a webhook answers with the workflow's JSON.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install_n8n.sh"


class N8nUnavailable(RuntimeError):
    """n8n is not installed (run scripts/install_n8n.sh) or did not start."""


def n8n_binary() -> Path:
    """The installed n8n executable (`scripts/install_n8n.sh --where`); never installs."""
    r = subprocess.run(["bash", str(INSTALL_SCRIPT), "--where"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise N8nUnavailable(r.stderr.strip() or "n8n is not installed: run scripts/install_n8n.sh")
    return Path(r.stdout.strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flatted_parse(text: str):
    """n8n stores execution data in the `flatted` format: a JSON list whose first entry is the
    value, where every string inside an object or list is the index of its value in the list."""
    table = json.loads(text)
    done: dict[int, object] = {}

    def revive(index: int):
        if index in done:
            return done[index]
        raw = table[index]
        if isinstance(raw, list):
            out: list = []
            done[index] = out
            out.extend(revive(int(v)) if isinstance(v, str) else v for v in raw)
            return out
        if isinstance(raw, dict):
            obj: dict = {}
            done[index] = obj
            for k, v in raw.items():
                obj[k] = revive(int(v)) if isinstance(v, str) else v
            return obj
        return raw

    return revive(0)


def _status(req: urllib.request.Request) -> tuple[int | None, bytes]:
    """The HTTP status and body of a request (None: no answer)."""
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None, b""


class LocalN8n:
    def __init__(self, folder: Path, workflows: list[Path], *, port: int | None = None):
        self.folder = Path(folder)
        self.workflows = list(workflows)  # activated when the file says "active": true
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.folder / "n8n.log"
        self.binary = n8n_binary()
        self._launched = 0.0
        self.start_s: float | None = None  # launch -> first webhook answer
        self.healthz_s: float | None = None  # launch -> /healthz 200 (webhooks 404 in between)
        self.not_ready_answers = 0  # answers other than the workflow's after /healthz was up

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def webhook(self, path: str) -> str:
        return f"{self.base}/webhook/{path}"

    @property
    def db_path(self) -> Path:
        return self.folder / ".n8n" / "database.sqlite"

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.folder),
            "N8N_USER_FOLDER": str(self.folder),
            "N8N_PORT": str(self.port),
            "N8N_LISTEN_ADDRESS": "127.0.0.1",
            "N8N_HOST": "127.0.0.1",
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_HIRING_BANNER_ENABLED": "false",
            "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "false",
            "N8N_RUNNERS_ENABLED": "false",  # no Code nodes: no task runner process
            "N8N_SECURE_COOKIE": "false",
            "N8N_LOG_LEVEL": "warn",
            "DB_TYPE": "sqlite",
            "EXTERNAL_FRONTEND_HOOKS_URLS": "",
        }

    def _run(self, *args: str, timeout: float = 180) -> None:
        r = subprocess.run(
            [str(self.binary), *args], env=self.env(), cwd=self.folder, capture_output=True, text=True, timeout=timeout
        )
        if r.returncode != 0:
            raise N8nUnavailable(f"n8n {args[0]} failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")

    def import_and_activate(self) -> None:
        import_dir = self.folder / "import"
        import_dir.mkdir(parents=True, exist_ok=True)
        active = []
        for wf in self.workflows:
            data = json.loads(wf.read_text())
            if data.get("active"):
                active.append(data["id"])
            data["active"] = False  # importing an active workflow fails on that foreign key
            (import_dir / wf.name).write_text(json.dumps(data))
        self._run("import:workflow", "--separate", f"--input={import_dir}")
        with sqlite3.connect(self.db_path) as db:
            marks = ",".join("?" * len(active))
            db.execute(
                f"""insert or ignore into workflow_history (versionId, workflowId, authors, nodes, connections, name)
                           select versionId, id, 'voxbridge', nodes, connections, name from workflow_entity
                           where id in ({marks})""",
                active,
            )
            db.execute(
                f"update workflow_entity set active = 1, activeVersionId = versionId where id in ({marks})", active
            )

    def start(self, ready_path: str, *, timeout_s: float = 180) -> None:
        """Launch `n8n start`; return once POST `ready_path` (a JSON-answering webhook) answers 200."""
        self.launch()
        self.wait_ready(ready_path, timeout_s=timeout_s)

    def launch(self) -> None:
        """Start the n8n process (same port and database as before: a restart); do not wait."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._launched = time.perf_counter()
        self.healthz_s = self.start_s = None
        self.not_ready_answers = 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        self.proc = subprocess.Popen(
            [str(self.binary), "start"],
            env=self.env(),
            cwd=self.folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_healthz(self, *, timeout_s: float = 180) -> None:
        self.wait_ready(None, timeout_s=timeout_s)

    def wait_ready(self, ready_path: str | None, *, timeout_s: float = 180) -> None:
        """Until /healthz is 200 and then (unless `ready_path` is None) the webhook answers JSON."""
        proc = self.proc
        if proc is None:
            raise N8nUnavailable("n8n was not launched")
        t0 = self._launched
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise N8nUnavailable(f"n8n exited with {proc.returncode}: {self.log_tail()}")
            if self.healthz_s is None:
                if self.get_status("/healthz")[0] == 200:
                    self.healthz_s = time.perf_counter() - t0
                else:
                    time.sleep(0.25)
                    continue
            if ready_path is None:
                return
            # 200 "n8n is starting up. Please wait" (database migrating), then 404 "Cannot POST"
            # (routes not mounted), then 404 "not registered" (activating): only JSON is the workflow
            status, body = self.post_status(ready_path)
            if status == 200 and body.lstrip().startswith(b"{"):
                self.start_s = time.perf_counter() - t0
                return
            self.not_ready_answers += 1
            time.sleep(0.25)
        self.stop()
        raise N8nUnavailable(f"n8n did not serve /webhook/{ready_path or ''} within {timeout_s:g}s: {self.log_tail()}")

    def get_status(self, path: str) -> tuple[int | None, bytes]:
        return _status(urllib.request.Request(self.base + path))

    def post_status(self, path: str, body: bytes = b'{"text": "ready?", "turnNumber": 0}') -> tuple[int | None, bytes]:
        return _status(
            urllib.request.Request(
                self.webhook(path), data=body, method="POST", headers={"content-type": "application/json"}
            )
        )

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # n8n and anything it started, in its own session
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def executions(self, workflow_id: str) -> list[dict]:
        """Finished executions of a workflow, oldest first: id, status and the parsed run data."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True) as db:
            rows = db.execute(
                """select e.id, e.status, d.data from execution_entity e join execution_data d
                                 on d.executionId = e.id where e.workflowId = ? order by e.id""",
                (workflow_id,),
            ).fetchall()
        return [{"id": i, "status": s, "data": flatted_parse(d)} for i, s, d in rows]

    def received_body(self, execution: dict) -> dict:
        """What the Webhook node received: the JSON body the agent client POSTed."""
        run = execution["data"]["resultData"]["runData"]["Webhook"][0]
        return run["data"]["main"][0][0]["json"]["body"]

    def __enter__(self) -> LocalN8n:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
