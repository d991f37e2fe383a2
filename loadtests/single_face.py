"""Single FER2013 test faces to POST /v1/classify, one per request (raw JPEG body).

Beyond the schema, a confident in-process prediction (top-2 margin >= 0.1 with the same model) must match the
service's label: the service must not change answers by batching or preprocessing differently.

    locust -f loadtests/single_face.py -H http://127.0.0.1:8000 --headless -u 8 -r 8 -t 60s \
        --csv reports/loadtests/single_face --html reports/loadtests/single_face.html
"""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

import numpy as np
from locust import constant, events, task

from loadtests.base import EmotionUser, on
from loadtests.checks import InvalidResponse, check_classify
from loadtests.data import Face, fer_faces

SAMPLE = 128
MARGIN = 0.1


@cache
def reference() -> tuple[tuple[Face, str | None], ...]:
    """``(face, expected label or None when the in-process answer is not confident)`` for SAMPLE faces."""
    from loadtests.base import model_dir
    from loadtests.inference import Classifier

    faces = fer_faces()[:SAMPLE]
    classifier = Classifier.load(model_dir(), threads=1)
    expected: list[str | None] = []
    for face in faces:  # one at a time: the answer must not depend on batch neighbours
        (probs,) = classifier.classify([face.data])
        answer = classifier.contract.group(probs)  # the service answers in config.json's groups, if it has any
        top2 = np.sort(answer)[-2:]
        confident = top2[1] - top2[0] >= MARGIN
        expected.append(classifier.contract.answer_labels[int(np.argmax(answer))] if confident else None)
    return tuple(zip(faces, expected, strict=True))


@on(events.init)
def _warm_up(**_kwargs: Any) -> None:
    reference()  # before any user starts, so the first seconds of a run measure the service, not this


class SingleFaceUser(EmotionUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        super().on_start()
        self.samples = itertools.cycle(reference() if self.same_model else ((f, None) for f in fer_faces()))

    @task
    def classify(self) -> None:
        face, expected = next(self.samples)

        def check(body: Any) -> None:
            label = check_classify(body, self.labels)
            if expected is not None and label is not None and label != expected:  # None: the quality rule flagged it
                raise InvalidResponse(f"label {label!r} but the same model in-process says {expected!r}")

        self.post_checked("/v1/classify", face.data, "image/jpeg", check)


if __name__ == "__main__":
    from locust import run_single_user

    run_single_user(SingleFaceUser)
