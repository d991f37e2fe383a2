"""Kill replicas of a running service under a bounded closed-loop load and count what the clients lost.

    python tools/fault_probe.py --kill EmotionModel                 # a private service (the shipped Serve config)
    python tools/fault_probe.py --kill Preprocessor --kill Ingress --kill EmotionModel
    python tools/fault_probe.py --kill Ingress --replicas Ingress=2 --set EmotionModel.health_check_period_s=2

It starts the app as ``emotion serve`` does (``serve.runtime.local.launch``, the shipped Serve config or a copy with
``--replicas`` / ``--set`` applied) on a small private local Ray (2 CPUs) and runs a closed-loop load from
``--clients`` keep-alive clients (FER2013 faces: single ``/v1/classify`` requests, every 8th a 4-face
``/v1/classify/batch`` and, with ``--analyze N``, every N-th a photo to ``/v1/analyze``). After ``--kill-after``
answers it SIGKILLs one replica of the first ``--kill`` deployment (its PID from Serve's own replica details, so
only this service's processes); once the service is whole again and ``--kill-after`` more answers came back, the
next one; after the last kill ``--kill-after`` more requests, then it stops.

An answer is **lost** unless it is 200, or 503 with Retry-After (the service said when to come back: a
well-behaved client waits that long, as these do). A lost answer is **cut** when its response had begun (the head
arrived, the body broke off): an ingress replica killed while writing a response; no proxy can replay a response it
has started to forward. Printed per kill: the answers after it, lost, the longest gap
between two successes (the stall), the time from the kill to the end of the first whole second of successes
(every answer in it a 200, at least half the rate of the 3 s before the kill), and from the Serve controller's log
when it saw the replica crash and how long the replacement took to start (and its constructor: model load +
warm-up for EmotionModel). Exit code 1 when anything was lost. Set EMOTION_DATA_DIR when the data is not in
../shared/data.

The load and kill machinery (``run_faults``) is also what ``tests/integration/test_faults.py`` and
``tests/integration/test_cluster.py`` run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.httpclient import Connection

HANG_GUARD_S = 180.0  # one request, one recovery: only against a hang
APP = "emotion"
RATE_WINDOW_S = 3.0  # the success rate before a kill is measured over this long


@dataclass(frozen=True)
class Answer:
    """One request as its client saw it; ``status`` 0 = no HTTP answer (connection lost, refused or timed out)."""

    route: str
    started: float
    ended: float
    status: int
    retry_after: bool = False
    detail: str = ""
    cut: bool = False  # the response had begun (its head arrived) when the connection broke

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def lost(self) -> bool:
        return not (self.ok or (self.status == 503 and self.retry_after))


@dataclass(frozen=True)
class Kill:
    deployment: str
    pid: int
    at: float  # time.monotonic(), as the answers
    wall: float = 0.0  # time.time(), to find it in Ray's logs


@dataclass
class FaultRun:
    answers: list[Answer] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)

    def lost(self) -> list[Answer]:
        return [a for a in self.answers if a.lost]

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for a in self.answers:
            counts[a.status] = counts.get(a.status, 0) + 1
        return dict(sorted(counts.items()))

    def reasons(self) -> dict[str, int]:
        """Answers other than 200 by status and reason (the error message up to its first "(" or ";")."""
        counts: dict[str, int] = {}
        for a in self.answers:
            if a.ok:
                continue
            try:
                reason = json.loads(a.detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                reason = a.detail
            key = f"{a.status} {re.split(r'[(;]', reason)[0].strip()[:60]}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def after(self, kill: Kill) -> list[Answer]:
        """Answers that ended after ``kill`` and before the next kill."""
        later = [k.at for k in self.kills if k.at > kill.at]
        end = min(later) if later else float("inf")
        return sorted((a for a in self.answers if kill.at <= a.ended < end), key=lambda a: a.ended)

    def stall_s(self, kill: Kill) -> float:
        """The longest gap between two successive successes, from the last success before the kill on."""
        before = [a.ended for a in self.answers if a.ok and a.ended < kill.at]
        times = ([max(before)] if before else [kill.at]) + [a.ended for a in self.after(kill) if a.ok]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def recovered_s(self, kill: Kill) -> float | None:
        """Kill -> the end of the first whole second after it in which every answer was a 200, at half the
        success rate of the ``RATE_WINDOW_S`` before the kill at least; None when the run ended first."""
        rate = sum(a.ok and kill.at - RATE_WINDOW_S <= a.ended < kill.at for a in self.answers) / RATE_WINDOW_S
        need = max(1, int(rate / 2))
        after = self.after(kill)
        if not after:
            return None
        last = after[-1].ended
        for answer in after:
            if not answer.ok or answer.ended + 1.0 > last:
                continue
            window = [a for a in after if answer.ended <= a.ended <= answer.ended + 1.0]
            if len(window) >= need and all(a.ok for a in window):
                return answer.ended + 1.0 - kill.at
        return None

    def summary(self) -> dict[str, Any]:
        per_kill = []
        for kill in self.kills:
            after = self.after(kill)
            recovered = self.recovered_s(kill)
            per_kill.append({
                "deployment": kill.deployment, "answers_after": len(after), "ok_after": sum(a.ok for a in after),
                "shed_after": sum(a.status == 503 and a.retry_after for a in after),
                "lost_after": sum(a.lost for a in after), "stall_s": round(self.stall_s(kill), 1),
                "recovered_s": None if recovered is None else round(recovered, 1),
            })  # fmt: skip
        lost = self.lost()
        span = max((a.ended for a in self.answers), default=0.0) - min((a.started for a in self.answers), default=0.0)
        return {
            "answers": len(self.answers), "statuses": self.statuses(), "reasons": self.reasons(), "lost": len(lost),
            "cut": sum(a.cut for a in lost),
            "seconds": round(span, 1), "ok_per_s": round(sum(a.ok for a in self.answers) / span, 1) if span else 0.0,
            "lost_samples": [f"{a.route} {a.status} {a.detail}" for a in lost[:5]], "kills": per_kill,
        }  # fmt: skip


# ---- payloads ------------------------------------------------------------------------------------------------


def requests_for(host: str, api_key: str | None, *, faces: int = 64, batch_every: int = 8, analyze_every: int = 0
                 ) -> list[tuple[str, bytes]]:  # fmt: skip
    """Pre-encoded ``(route, request)`` pairs, cycled by the clients: FER2013 faces to ``/v1/classify``, every
    ``batch_every``-th a 4-face ``/v1/classify/batch``, every ``analyze_every``-th a photo to ``/v1/analyze``."""
    from loadtests.data import content_type, fer_faces, multipart, photos

    def request(path: str, body: bytes, ctype: str) -> bytes:
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\nContent-Type: {ctype}\r\n"
        if api_key:
            head += f"X-API-Key: {api_key}\r\n"
        return (head + "\r\n").encode() + body

    face_list = [f.data for f in fer_faces(faces)]
    photo_list = [p.data for p in photos()[:8]] if analyze_every else []
    out: list[tuple[str, bytes]] = []
    for i, data in enumerate(face_list):
        if analyze_every and i % analyze_every == analyze_every - 1:
            photo = photo_list[i % len(photo_list)]
            out.append(("/v1/analyze", request("/v1/analyze", photo, content_type(photo))))
        elif batch_every and i % batch_every == batch_every - 1:
            body, ctype = multipart("files", [face_list[(i + k) % len(face_list)] for k in range(4)])
            out.append(("/v1/classify/batch", request("/v1/classify/batch", body, ctype)))
        else:
            out.append(("/v1/classify", request("/v1/classify", data, content_type(data))))
    return out


# ---- replicas -----------------------------------------------------------------------------------------------


def deployment_details(app: str = APP) -> dict[str, Any]:
    """Serve's details of ``app``'s deployments (status, replicas with state, pid, node_id), from its controller."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None, "no Serve instance in this process"
    deployments: dict[str, Any] = client.get_serve_details()["applications"][app]["deployments"]
    return deployments


def replicas(app: str = APP) -> dict[str, list[dict[str, Any]]]:
    """The replica details per deployment of ``app``."""
    return {name: list(d.get("replicas", [])) for name, d in deployment_details(app).items()}


def whole(expected: dict[str, int], app: str = APP, gone: Collection[int] = ()) -> bool:
    """Every deployment HEALTHY with ``expected[name]`` RUNNING replicas (and no others), none of them a process of
    ``gone`` (a replica killed before Serve noticed is still listed as RUNNING until its next health check)."""
    deployments = deployment_details(app)
    for name, count in expected.items():
        d = deployments.get(name, {})
        listed = d.get("replicas", [])
        states = [r["state"] for r in listed]
        if d.get("status") != "HEALTHY" or states.count("RUNNING") != count or len(states) != count:
            return False
        if any(r.get("pid") in gone for r in listed):
            return False
    return True


def wait_whole(expected: dict[str, int], timeout_s: float = HANG_GUARD_S, gone: Collection[int] = ()) -> None:
    deadline = time.monotonic() + timeout_s
    while not whole(expected, gone=gone):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service was not whole again within {timeout_s:.0f}s: {replicas()}")
        time.sleep(0.2)


def kill_replica(deployment: str, *, node_id: str | None = None) -> int:
    """SIGKILL one RUNNING replica of ``deployment`` (on ``node_id`` if given); return its PID."""
    for replica in replicas().get(deployment, []):
        if replica["state"] == "RUNNING" and (node_id is None or replica.get("node_id") == node_id):
            pid = int(replica["pid"])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # dead already, not yet noticed by Serve
                continue
            return pid
    raise LookupError(f"no RUNNING {deployment} replica{f' on node {node_id}' if node_id else ''}: {replicas()}")


# ---- load ---------------------------------------------------------------------------------------------------


async def closed_loop(
    host: str, port: int, requests: Sequence[tuple[str, bytes]], *, go_on: Callable[[], bool], clients: int,
    on_answer: Callable[[int], None] | None = None, timeout_s: float = HANG_GUARD_S,
    answers: list[Answer] | None = None,
) -> list[Answer]:  # fmt: skip
    """``clients`` keep-alive connections send requests while ``go_on()`` (asked before each one) says so, each
    client its next as soon as its last one was answered (after Retry-After on a 503 that carries it); a lost
    connection is reopened for the next one. Answers are appended to ``answers`` (a new list by default) as they
    come; ``on_answer(n)`` hears the count."""
    answers = [] if answers is None else answers
    payloads: Iterator[tuple[str, bytes]] = itertools.cycle(requests)

    async def client() -> None:
        conn: Connection | None = None
        while go_on():
            route, request = next(payloads)
            started = time.monotonic()
            status, retry_after, detail, cut = 0, b"", "", False
            try:
                if conn is None:
                    conn = await asyncio.wait_for(Connection.open(host, port), timeout_s)
                open_conn = conn
                status, headers, body = await asyncio.wait_for(open_conn.send(request), timeout_s)
                retry_after = headers.get(b"retry-after", b"")
                detail = body[:400].decode("utf-8", "replace") if status != 200 else ""
                if headers.get(b"connection", b"").lower() == b"close":
                    open_conn.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError) as exc:
                detail = f"{type(exc).__name__}: {exc}"
                # readexactly(Content-Length) knows how much it expected: the head had arrived, the body was cut
                cut = isinstance(exc, asyncio.IncompleteReadError) and exc.expected is not None
                if conn is not None:
                    conn.close()
                conn = None
            answers.append(Answer(route, started, time.monotonic(), status, bool(retry_after), detail, cut))
            if on_answer is not None:
                on_answer(len(answers))
            if status == 503 and retry_after:
                await asyncio.sleep(min(float(retry_after or 1), 5.0))  # what a well-behaved client does
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers


def run_faults(
    url: str, api_key: str | None, kills: Sequence[str | Callable[[], tuple[str, int]]], *, expected: dict[str, int],
    kill_after: int = 100, clients: int = 8, analyze_every: int = 0, max_requests: int | None = None,
) -> FaultRun:  # fmt: skip
    """A closed-loop load from ``clients`` clients with a replica killed at fixed answer counts: after
    ``kill_after`` answers SIGKILL a replica of ``kills[0]``; once the service is ``expected`` (replicas per
    deployment) again and ``kill_after`` more answers came back, the next one; after the last kill, ``kill_after``
    more requests, then stop. A kill is a deployment name or a callable that kills and returns ``(label, pid)``
    (e.g. a whole node). ``max_requests`` (default 50 times the planned count) only guards against a run that
    never ends. Call from the process that started the service (Serve's driver)."""
    host_port = url.split("://", 1)[1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    payloads = requests_for(host_port, api_key, analyze_every=analyze_every)
    run = FaultRun()
    pending = list(kills)
    limit = max_requests or 50 * kill_after * (len(kills) + 1)
    next_at = kill_after  # answers before the next kill
    started = 0
    stop_at = kill_after  # requests started before the load ends (once no kill is pending)
    busy = False
    failure: BaseException | None = None

    def go_on() -> bool:
        nonlocal started
        more = started < limit and (bool(pending) or busy or started < stop_at)
        started += more
        return more

    async def kill_next() -> None:
        nonlocal next_at, stop_at, busy, failure
        target = pending.pop(0)
        try:
            if run.kills:  # the last kill must have healed (its replica replaced) before the next one
                await asyncio.to_thread(wait_whole, expected, gone={k.pid for k in run.kills})
            if callable(target):
                label, pid = await asyncio.to_thread(target)
            else:
                label, pid = target, await asyncio.to_thread(kill_replica, target)
        except Exception as exc:  # stop the load; run_faults raises it once the clients are done
            failure = exc
            pending.clear()
            return
        finally:
            busy = False
        run.kills.append(Kill(label, pid, time.monotonic(), time.time()))
        next_at, stop_at = len(run.answers) + kill_after, started + kill_after

    tasks: set[asyncio.Task[None]] = set()

    def on_answer(count: int) -> None:
        nonlocal busy
        if pending and not busy and count >= next_at:
            busy = True
            task = asyncio.get_running_loop().create_task(kill_next())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def scenario() -> None:
        await closed_loop(host.strip("[]"), int(port), payloads, go_on=go_on, clients=clients,
                          on_answer=on_answer, answers=run.answers)  # fmt: skip
        while tasks:  # a kill still waiting for the service to heal (only when max_requests ran out)
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())
    if failure is not None:
        raise RuntimeError(f"a kill failed after {len(run.answers)} answers: {run.summary()}") from failure
    return run


_LOG_TIME = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def _log_time(stamp: str) -> float:
    day, _, millis = stamp.partition(",")
    return time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def controller_timeline(logs_dir: Path, kill: Kill) -> dict[str, float | None]:
    """From the Serve controller's log: seconds from ``kill`` until the controller saw the replica's actor crash
    (its health check: every ``health_check_period_s``, 10 s by default), and the replacement's start: all of it
    (worker process, imports, constructor) and the constructor's part (model load + warm-up for EmotionModel)."""
    deployment = kill.deployment
    seen = started = constructor = None
    for path in sorted((logs_dir / "serve").glob("controller_*.log")):
        for line in path.read_text().splitlines():
            stamp = re.search(_LOG_TIME, line)
            if not stamp or f"deployment='{deployment}'" not in line or _log_time(stamp.group(1)) < kill.wall - 1:
                continue
            at = _log_time(stamp.group(1)) - kill.wall
            if seen is None and ("crashed, marking it unhealthy" in line or "failed the health check" in line):
                seen = at
            elif seen is not None and started is None and "started successfully" in line:
                total = re.search(r"after ([0-9.]+)s", line)
                ctor = re.search(r"took ([0-9.]+)s", line)
                started = float(total.group(1)) if total else at - seen
                constructor = float(ctor.group(1)) if ctor else None
    return {"crash_seen_s": None if seen is None else round(seen, 1), "replacement_start_s": started,
            "constructor_s": constructor}  # fmt: skip


# ---- command line -------------------------------------------------------------------------------------------


def edited_config(tmp: Path, replicas_: dict[str, int], sets: dict[str, Any]) -> Path:
    """The shipped Serve config with ``num_replicas`` per deployment and ``Deployment.option=value`` changes."""
    import yaml

    from serve.runtime.settings import DEFAULT_SERVE_CONFIG

    config = yaml.safe_load(DEFAULT_SERVE_CONFIG.read_text())
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    for name, count in replicas_.items():
        deployments[name]["num_replicas"] = count
    for key, value in sets.items():
        name, _, option = key.partition(".")
        deployments[name][option] = value
    path = tmp / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill", action="append", choices=["Ingress", "Preprocessor", "EmotionModel"], default=[])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kill-after", type=int, default=150,
                        help="answers before each kill, and requests after the last one")  # fmt: skip
    parser.add_argument("--analyze", type=int, default=0, metavar="N", help="every N-th request a /v1/analyze photo")
    parser.add_argument("--replicas", action="append", default=[], metavar="DEPLOYMENT=N")
    parser.add_argument("--set", action="append", default=[], metavar="DEPLOYMENT.OPTION=VALUE",
                        help="a deployment option in the copy of the Serve config (YAML value)")  # fmt: skip
    parser.add_argument("--flag", action="append", default=[], metavar="SETTING=VALUE",
                        help="a setting, as an `emotion serve` flag sets it: max_queue_delay_s=0")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the summary (and every answer) here")
    opts = parser.parse_args(argv)

    import yaml

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from serve.runtime import local, ports

    counts = {name: int(n) for name, _, n in (r.partition("=") for r in opts.replicas)}
    sets = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in opts.set)}
    temp_dir = Path(f"/tmp/rt{secrets.token_hex(3)}")
    temp_dir.mkdir()
    key = secrets.token_urlsafe(16)
    flags: dict[str, object] = {
        "port": ports.free_port(20000, 32767), "metrics_export_port": ports.free_port(20000, 32767),
        "auth": "on", "api_keys": key, "serve_config": str(edited_config(temp_dir, counts, sets)),
        **{k: yaml.safe_load(v) for k, _, v in (f.partition("=") for f in opts.flag)},
    }  # fmt: skip
    expected = {"Ingress": 1, "Preprocessor": 1, "EmotionModel": 1, **counts}
    started = time.monotonic()
    url, _ = local.launch(flags, local.RayOptions(num_cpus=2, object_store_mb=200, temp_dir=str(temp_dir)))
    print(f"service at {url} after {time.monotonic() - started:.0f}s; expected replicas {expected}", flush=True)
    try:
        run = run_faults(url, key, opts.kill, expected=expected, kill_after=opts.kill_after, clients=opts.clients,
                         analyze_every=opts.analyze)  # fmt: skip
        wait_whole(expected)
    finally:
        local.stop()  # replicas flush their buffered logs (fast mode buffers 1,000 lines) as they stop
    logs = temp_dir / "session_latest" / "logs"
    summary = run.summary()
    for kill, entry in zip(run.kills, summary["kills"], strict=True):
        entry.update(controller_timeline(logs, kill))
    summary["kill_times"] = [time.strftime("%H:%M:%S", time.localtime(k.wall)) + f"{k.wall % 1:.3f}"[1:]
                             for k in run.kills]  # fmt: skip
    print(json.dumps(summary, indent=2))
    if opts.json:
        answers = [a.__dict__ for a in run.answers]
        opts.json.write_text(json.dumps({**summary, "kills_at": [k.__dict__ for k in run.kills], "log": answers}))
    return 1 if summary["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
