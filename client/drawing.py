"""Drawing for ``emotion analyze-video``: labelled boxes on frames, a contact sheet, each track's emotion plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

COLOURS = ("#33ff33", "#ff3333", "#3399ff", "#ffcc00", "#ff66ff", "#00ffff")
UNREADABLE_COLOUR = "#888888"  # grey: the service claims no emotion for this face


def face_text(face: dict[str, Any]) -> str:
    """What a face's box is captioned with: ``#track label p`` for a readable face (the smoothed label when there
    is one, with the frame's own top probability), ``#track unreadable (reason)`` for one the service cannot read."""
    track = face.get("track_id")
    prefix = f"#{track} " if track else ""
    if face.get("readable") is False or face.get("label") is None:
        return f"{prefix}unreadable ({face.get('unreadable_reason') or 'no label'})"
    label = face.get("smoothed_label") or face["label"]
    return f"{prefix}{label} {face['probabilities'][face['label']]:.2f}"


def annotate(image: Image.Image, faces: Sequence[dict[str, Any]]) -> Image.Image:
    """A copy of the frame with every face boxed and labelled (``face_text``; unreadable faces in grey)."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(2, out.width // 320)
    for face in faces:
        x, y, w, h = face["box"]
        track = face.get("track_id")
        readable = face.get("readable") is not False and face.get("label") is not None
        colour = COLOURS[(track or 0) % len(COLOURS)] if readable else UNREADABLE_COLOUR
        text = face_text(face)
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((x, y), text)
        draw.rectangle((x, y - (bottom - top) - 4, x + (right - left) + 4, y), fill=colour)
        draw.text((x + 2, y - (bottom - top) - 3), text, fill="black")
    return out


def contact_sheet(frames: Sequence[tuple[int, Image.Image]], path: Path, columns: int = 4, width: int = 480) -> None:
    """Annotated frames in a grid, each captioned with its index."""
    if not frames:
        return
    thumbs = []
    for index, frame in frames:
        thumb = frame.resize((width, max(1, round(frame.height * width / frame.width))))
        ImageDraw.Draw(thumb).text((6, 6), f"frame {index}", fill="white")
        thumbs.append(thumb)
    rows = (len(thumbs) + columns - 1) // columns
    height = max(t.height for t in thumbs)
    sheet = Image.new("RGB", (columns * width, rows * height), "black")
    for i, thumb in enumerate(thumbs):
        sheet.paste(thumb, ((i % columns) * width, (i // columns) * height))
    sheet.save(path)


def emotion_plot(records: Sequence[dict[str, Any]], labels: Sequence[str], path: Path, max_tracks: int = 6) -> None:
    """One panel per tracked face (the longest tracks): each label's probability over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[int, list[tuple[float, dict[str, float]]]] = {}
    for rec in records:
        for face in rec.get("faces", []):
            series.setdefault(face.get("track_id", 0), []).append((rec["time_s"], face["probabilities"]))
    tracks = sorted(series, key=lambda t: -len(series[t]))[:max_tracks]
    fig, axes = plt.subplots(max(1, len(tracks)), 1, figsize=(10, 2.2 * max(1, len(tracks))), squeeze=False)
    for ax, track in zip(axes[:, 0], tracks, strict=False):
        times = [t for t, _ in series[track]]
        for label in labels:
            ax.plot(times, [p[label] for _, p in series[track]], label=label, linewidth=1)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"face #{track}")
        ax.legend(loc="upper right", fontsize="small", ncol=len(labels))
    axes[-1, 0].set_xlabel("time (s)")
    if not tracks:
        axes[0, 0].text(0.5, 0.5, "no face found", ha="center", transform=axes[0, 0].transAxes)
    fig.suptitle("Emotion probability over time, per tracked face")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
