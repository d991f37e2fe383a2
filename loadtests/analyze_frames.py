"""Frame analysis: real photographs (faces/boxes.parquet, 1 to 20+ faces each) to POST /v1/analyze.

Every face in the answer must carry a box and a valid prediction.

    locust -f loadtests/analyze_frames.py -H http://127.0.0.1:8000 --headless -u 4 -r 4 -t 60s \
        --csv reports/loadtests/analyze_frames --html reports/loadtests/analyze_frames.html
"""

from __future__ import annotations

import itertools
from typing import Any

from locust import constant, events, task

from loadtests.base import EmotionUser, on
from loadtests.checks import check_analyze
from loadtests.data import content_type, photos


@on(events.init)
def _warm_up(**_kwargs: Any) -> None:
    photos()


class AnalyzeFramesUser(EmotionUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        self.photos = itertools.cycle(photos())

    @task
    def analyze(self) -> None:
        photo = next(self.photos)

        def check(body: Any) -> None:
            check_analyze(body, self.labels)

        self.post_checked("/v1/analyze", photo.data, content_type(photo.data), check)


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(AnalyzeFramesUser)
