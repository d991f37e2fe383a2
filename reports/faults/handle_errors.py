"""Which exception reaches a caller through a DeploymentHandle when a replica is SIGKILLed while it holds the call.

    python reports/faults/handle_errors.py fast       # fast mode's handles (gRPC), as `emotion serve` runs
    python reports/faults/handle_errors.py classic    # Serve's default handles (Ray actor calls)

A throwaway graph Caller -> Middle -> Sleeper on a private local Ray: a call sleeps 3 s in Sleeper; 1 s in, Sleeper
(then, once healed, Middle) is SIGKILLed, and Caller reports the exception's classes. Results (Ray 2.60.0): see
README.md in this folder. Not part of the service or its tests.
"""

import asyncio
import os
import secrets
import signal
import sys
import time

mode = sys.argv[1] if len(sys.argv) > 1 else "fast"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
if mode == "fast":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    from serve.runtime.fastmode import apply_fast_mode

    apply_fast_mode()  # before ray.serve is imported: Serve reads its constants at import

import ray  # noqa: E402
from ray import serve  # noqa: E402


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Sleeper:
    def pid(self) -> int:
        return os.getpid()

    async def work(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Middle:
    def __init__(self, sleeper):
        self.sleeper = sleeper

    def pid(self) -> int:
        return os.getpid()

    async def work(self, seconds: float) -> str:
        return await self.sleeper.work.remote(seconds)


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Caller:
    def __init__(self, middle, sleeper):
        self.middle, self.sleeper = middle, sleeper

    async def pids(self) -> tuple[int, int]:
        return await self.middle.pid.remote(), await self.sleeper.pid.remote()

    async def call(self, seconds: float):
        try:
            return "ok", await self.middle.work.remote(seconds)
        except BaseException as exc:  # what arrives is the point
            cause = getattr(exc, "cause", None)
            return "error", [c.__name__ for c in type(exc).__mro__][:4], type(cause).__name__


async def main(handle) -> None:
    for victim in ("Sleeper", "Middle"):
        middle_pid, sleeper_pid = await handle.pids.remote()
        call = asyncio.ensure_future(_result(handle.call.remote(3.0)))
        await asyncio.sleep(1.0)
        os.kill(sleeper_pid if victim == "Sleeper" else middle_pid, signal.SIGKILL)
        print(mode, "killed", victim, "->", await asyncio.wait_for(call, 120), flush=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            status = serve.status().applications["exp"]
            if status.status == "RUNNING" and all(d.status == "HEALTHY" for d in status.deployments.values()):
                break
            await asyncio.sleep(0.5)
        print(mode, "a new call once healed ->", await asyncio.wait_for(_result(handle.call.remote(0.1)), 120))


async def _result(response):
    return await response


if __name__ == "__main__":
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, _temp_dir=f"/tmp/rt{secrets.token_hex(3)}")
    sleeper = Sleeper.bind()
    app_handle = serve.run(Caller.bind(Middle.bind(sleeper), sleeper), name="exp", route_prefix=None)
    try:
        asyncio.run(main(app_handle))
    finally:
        serve.shutdown()
        ray.shutdown()
