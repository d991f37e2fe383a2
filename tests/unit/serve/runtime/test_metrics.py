"""serve.runtime.metrics without Ray: names, buckets, the no-op stand-ins."""

from __future__ import annotations

from serve.runtime import metrics


def test_histogram_buckets_are_valid_for_ray() -> None:
    for buckets in (metrics.LATENCY_MS_BUCKETS, metrics.BATCH_BUCKETS, metrics.FACES_BUCKETS, metrics.DROPPED_BUCKETS):
        assert all(b > 0 for b in buckets) and buckets == sorted(set(buckets))


def test_null_metrics_cover_every_ingress_metric() -> None:
    null = metrics.null_ingress_metrics()
    for name, metric in vars(null).items():
        for each in metric.values() if isinstance(metric, dict) else [metric]:
            each.inc(1, tags={"route": name})
            each.observe(1.0)
            each.set(2.0)


def test_exported_names_are_unique_and_prefixed() -> None:
    assert len(set(metrics.EXPORTED_NAMES)) == len(metrics.EXPORTED_NAMES)
    assert all(name.startswith("ray_emotion_") for name in metrics.EXPORTED_NAMES)
