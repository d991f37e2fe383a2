"""Many-image requests: 32 FER2013 test faces per POST /v1/classify/batch (multipart ``files``).

Every answer must carry 32 valid results in request order.

    locust -f loadtests/many_faces.py -H http://127.0.0.1:8000 --headless -u 4 -r 4 -t 60s \
        --csv reports/loadtests/many_faces --html reports/loadtests/many_faces.html
"""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

from locust import constant, events, task

from loadtests.base import EmotionUser, on
from loadtests.checks import check_batch
from loadtests.data import fer_faces, multipart

IMAGES_PER_REQUEST = 32


@cache
def bodies(count: int = 16) -> tuple[tuple[bytes, str], ...]:
    """``count`` ready multipart bodies of IMAGES_PER_REQUEST different faces each."""
    faces = fer_faces()
    n = IMAGES_PER_REQUEST
    return tuple(multipart("files", [f.data for f in faces[i * n : (i + 1) * n]]) for i in range(count))


@on(events.init)
def _warm_up(**_kwargs: Any) -> None:
    bodies()


class ManyFacesUser(EmotionUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        self.bodies = itertools.cycle(bodies())

    @task
    def classify_batch(self) -> None:
        body, ctype = next(self.bodies)

        def check(resp: Any) -> None:
            check_batch(resp, IMAGES_PER_REQUEST, self.labels)

        self.post_checked("/v1/classify/batch", body, ctype, check)


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(ManyFacesUser)
