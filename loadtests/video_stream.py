"""Video-stream clients: real video frames (JPEG) over WS /v1/stream at a fixed frame rate, one socket per user.

Reported as locust request rows (request type ``WS``): ``frame`` (client-side send -> answer latency of every
answered frame), ``frame server latency_ms`` (the service's own figure), ``frame dropped`` (frames the service
chose to skip: counted, not failures), ``connect``. Failures: error answers, invalid faces, answers for frames
never sent, frames with no answer after ``--request-timeout`` (10 s), a socket that cannot connect or breaks.
With ``--requests-per-user N`` each user sends N frames, then ``end``, and waits for the answers of all of them
(the service answers what it has and closes) before it stops: every frame sent is accounted for.

    locust -f loadtests/video_stream.py -H http://127.0.0.1:8000 --headless -u 4 -r 4 -t 60s --fps 10 \
        --csv reports/loadtests/video_stream --html reports/loadtests/video_stream.html
"""

from __future__ import annotations

import json
import time
from typing import Any

import gevent
import websocket
from locust import User, constant, events, task

from loadtests.base import RequestBudget, local_contract, on, request_timeout
from loadtests.checks import InvalidResponse, check_faces
from loadtests.data import DEFAULT_VIDEO, video_frames


@on(events.init_command_line_parser)
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second each stream client sends")
    parser.add_argument("--video", default=DEFAULT_VIDEO, help="clip in shared/data/video to stream")


@on(events.init)
def _warm_up(environment: Any, **_kwargs: Any) -> None:
    video_frames(getattr(environment.parsed_options, "video", DEFAULT_VIDEO))


class StreamError(Exception):
    """The stream answered a frame wrongly or not at all."""


class VideoStreamUser(RequestBudget, User):
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.reply_timeout = request_timeout(self.environment)
        self.fps = float(getattr(options, "fps", 10.0))
        self.frames = video_frames(getattr(options, "video", DEFAULT_VIDEO))
        self.labels = local_contract().answer_labels
        self.sent: dict[int, float] = {}
        self.count = 0
        url = (self.host or "").replace("http", "ws", 1).rstrip("/") + "/v1/stream"
        start = time.perf_counter()
        try:
            self.ws = websocket.create_connection(url, timeout=self.reply_timeout)
        except (websocket.WebSocketException, OSError) as exc:
            self._report("connect", start, exc)
            self.finish(completed=False)
        self._report("connect", start)
        self.receiver = gevent.spawn(self._receive)
        self.next_due = time.perf_counter()

    def on_stop(self) -> None:
        if hasattr(self, "ws"):
            self.ws.close()
            self.receiver.kill(block=False)

    @task
    def send_frame(self) -> None:
        now = time.perf_counter()
        self._expire(now)
        self.sent[self.count] = now
        try:
            self.ws.send_binary(self.frames[self.count % len(self.frames)])
        except (websocket.WebSocketException, OSError) as exc:
            self._report("frame", now, exc)
            self.finish(completed=False)
        self.count += 1
        if self.budget_left() == 1:  # that was this user's last frame: collect its answers before stopping
            self._drain()
        self.count_request()  # raises StopUser after the last frame
        self.next_due = max(self.next_due + 1.0 / self.fps, now - 1.0)  # never burst more than 1 s to catch up
        gevent.sleep(max(0.0, self.next_due - time.perf_counter()))

    def _expire(self, now: float) -> None:
        """Frames unanswered for longer than the reply timeout are failures (and forgotten)."""
        for index, sent_at in list(self.sent.items()):
            if now - sent_at > self.reply_timeout:
                del self.sent[index]
                self._report("frame", sent_at, StreamError(f"no answer within {self.reply_timeout:g} s"))

    def _drain(self) -> None:
        """Ask the service to answer what it has and close (``end``), and wait for those answers (bounded by the
        reply timeout of the last frame); what is still unanswered then is a failure."""
        try:
            self.ws.send("end")
        except (websocket.WebSocketException, OSError) as exc:
            self._report("frame", time.perf_counter(), exc)
        last = max(self.sent.values(), default=time.perf_counter())
        self.receiver.join(timeout=max(0.0, last + self.reply_timeout - time.perf_counter()))
        self._expire(float("inf"))

    def _receive(self) -> None:
        while True:
            try:
                message = self.ws.recv()
            except (websocket.WebSocketException, OSError):
                return
            if not message:  # the socket was closed (a close frame reads as an empty message)
                return
            received = time.perf_counter()
            try:
                self._handle(json.loads(message), received)
            except (InvalidResponse, ValueError, TypeError, KeyError, AttributeError) as exc:
                self._report("frame", received, StreamError(f"invalid answer: {exc}"))

    def _handle(self, answer: dict[str, Any], received: float) -> None:
        sent_at = self.sent.pop(int(answer["index"]), None)
        if sent_at is None:
            raise InvalidResponse(f"answer for a frame never sent (or answered twice): index {answer['index']}")
        if answer.get("dropped") is True:
            self._report("frame dropped", sent_at, end=received)
        elif "error" in answer:
            self._report("frame", sent_at, StreamError(f"error answer {answer['error'].get('code')}"), end=received)
        else:
            check_faces(answer["faces"], self.labels, f"frame {answer['index']}")
            self._report("frame", sent_at, end=received, length=len(answer["faces"]))
            self.environment.events.request.fire(
                request_type="WS",
                name="frame server latency_ms",
                response_time=float(answer["latency_ms"]),
                response_length=0,
                exception=None,
                context={},
            )

    def _report(
        self, name: str, start: float, exc: BaseException | None = None, end: float | None = None, length: int = 0
    ) -> None:
        elapsed_ms = ((end if end is not None else time.perf_counter()) - start) * 1000
        self.environment.events.request.fire(
            request_type="WS", name=name, response_time=elapsed_ms, response_length=length, exception=exc, context={}
        )


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(VideoStreamUser)
