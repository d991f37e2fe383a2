"""client.drawing: how a face's box is captioned, readable or not, and that annotating draws both kinds."""

from __future__ import annotations

from PIL import Image

from client.drawing import UNREADABLE_COLOUR, annotate, face_text


def test_captions_name_the_emotion_or_why_there_is_none() -> None:
    probs = {"angry": 0.1, "happy": 0.2, "sad": 0.1, "other": 0.6}
    readable = {"box": [2, 20, 20, 20], "label": "other", "probabilities": probs, "readable": True, "track_id": 3,
                "smoothed_label": "happy"}  # fmt: skip
    blurred = {"box": [30, 20, 20, 20], "label": None, "probabilities": probs, "readable": False,
               "unreadable_reason": "blurred"}  # fmt: skip
    assert face_text(readable) == "#3 happy 0.60"  # the smoothed label, with this frame's top probability
    assert face_text(blurred) == "unreadable (blurred)"
    assert face_text({"box": [0, 0, 1, 1], "label": "sad", "probabilities": {"sad": 1.0}}) == "sad 1.00"  # older
    out = annotate(Image.new("RGB", (64, 64)), [readable, blurred])
    assert out.getpixel((30, 30)) == Image.new("RGB", (1, 1), UNREADABLE_COLOUR).getpixel((0, 0))
