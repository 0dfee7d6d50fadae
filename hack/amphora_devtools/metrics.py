"""Reading Prometheus ``/metrics`` (the operator's and kube-apiserver's) into plain samples."""

from __future__ import annotations

import ssl

from prometheus_client.parser import text_string_to_metric_families

from amphora_devtools.net import http_get

#: Sample name -> [(labels, value)], e.g. ``samples["amphora_status_writes_total"]``.
Samples = dict[str, list[tuple[dict[str, str], float]]]
#: Cumulative histogram buckets: (upper bound "le", count), sorted by bound.
Buckets = list[tuple[float, float]]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, grouped by sample name."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def scrape_text(
    url: str, *, token: str | None = None, context: ssl.SSLContext | None = None
) -> str:
    """The exposition text at ``url`` (raises ``OSError`` unless it answers 200)."""
    return http_get(url, token=token, context=context, timeout=30).decode()


def scrape(url: str, *, token: str | None = None, context: ssl.SSLContext | None = None) -> Samples:
    return parse(scrape_text(url, token=token, context=context))


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def histogram(samples: Samples, name: str, by: str) -> dict[str, Buckets]:
    """The ``<name>_bucket`` series of a histogram, per value of label ``by``."""
    result: dict[str, Buckets] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        result.setdefault(labels.get(by, ""), []).append((float(labels["le"]), value))
    return {key: sorted(buckets) for key, buckets in result.items()}
