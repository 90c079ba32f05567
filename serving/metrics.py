"""Prometheus metrics of the service (text exposition format 0.0.4, no extra dependency).

Counters and a latency histogram kept per process (with several uvicorn workers each worker
exposes its own series; Prometheus sums them).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

MICROBATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


class Metrics:
    """Request counts, request latencies, decisions by action/reason/policy, model reloads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._latency: dict[str, list[int]] = {}
        self._latency_sum: dict[str, float] = defaultdict(float)
        self._latency_count: dict[str, int] = defaultdict(int)
        self._decisions: dict[tuple[str, str, str], int] = defaultdict(int)
        self._reloads: dict[str, int] = defaultdict(int)
        self._fallback_errors = 0
        self._microbatch: list[int] = [0] * (len(MICROBATCH_BUCKETS) + 1)
        self._microbatch_sum = 0
        self._log_write: list[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self._log_write_sum = 0.0
        self._decisions_logged = 0
        self._outcomes: dict[str, int] = defaultdict(int)
        self._store_errors = 0

    def observe_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and record its latency."""
        with self._lock:
            self._requests[(route, method, str(status))] += 1
            buckets = self._latency.get(route)
            if buckets is None:
                buckets = self._latency[route] = [0] * (len(LATENCY_BUCKETS) + 1)
            buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._latency_sum[route] += seconds
            self._latency_count[route] += 1

    def observe_decision(self, *, action: str, reason: str, policy: str) -> None:
        """Count one decision."""
        with self._lock:
            self._decisions[(action, reason, policy)] += 1

    def observe_reload(self, *, outcome: str) -> None:
        """Count one model (re)load attempt: ``ok`` or ``refused``."""
        with self._lock:
            self._reloads[outcome] += 1

    def observe_model_error(self) -> None:
        """Count a model failure answered by the fallback policy."""
        with self._lock:
            self._fallback_errors += 1

    def observe_microbatch(self, size: int) -> None:
        """Record the number of single requests decided in one combined call."""
        with self._lock:
            self._microbatch[bisect.bisect_left(MICROBATCH_BUCKETS, size)] += 1
            self._microbatch_sum += size

    def observe_log_write(self, n_decisions: int, seconds: float) -> None:
        """Record one decision-log transaction (its decisions and latency)."""
        with self._lock:
            self._decisions_logged += n_decisions
            self._log_write[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._log_write_sum += seconds

    def observe_outcomes(
        self, *, new: int, repeated: int, matched: int, unknown_charge: int
    ) -> None:
        """Count reported attempts: stored, repeats, matched to a decision, unknown charge."""
        with self._lock:
            self._outcomes["new"] += new
            self._outcomes["repeated"] += repeated
            self._outcomes["matched"] += matched
            self._outcomes["unknown_charge"] += unknown_charge

    def observe_store_error(self) -> None:
        """Count a request refused (503) because the store failed."""
        with self._lock:
            self._store_errors += 1

    def _render_store(self) -> list[str]:
        out = [
            "# HELP retryopt_decisions_logged_total Decisions written to the decision log.",
            "# TYPE retryopt_decisions_logged_total counter",
            f"retryopt_decisions_logged_total {self._decisions_logged}",
            "# HELP retryopt_log_write_duration_seconds Decision-log transaction latency.",
            "# TYPE retryopt_log_write_duration_seconds histogram",
        ]
        cum = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self._log_write, strict=True):
            cum += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"retryopt_log_write_duration_seconds_bucket{_labels((('le', le),))} {cum}")
        out += [
            f"retryopt_log_write_duration_seconds_sum {self._log_write_sum!r}",
            f"retryopt_log_write_duration_seconds_count {cum}",
            "# HELP retryopt_outcomes_total Reported attempts: new, repeated, matched to a "
            "decision, of an unknown charge.",
            "# TYPE retryopt_outcomes_total counter",
        ]
        for kind in ("new", "repeated", "matched", "unknown_charge"):
            out.append(
                f"retryopt_outcomes_total{_labels((('kind', kind),))} {self._outcomes[kind]}"
            )
        out += [
            "# HELP retryopt_store_errors_total Requests refused because the store failed.",
            "# TYPE retryopt_store_errors_total counter",
            f"retryopt_store_errors_total {self._store_errors}",
        ]
        return out

    def render(self, *, model_loaded: bool, model_version: str | None) -> str:
        """The metrics in Prometheus text format."""
        out: list[str] = []
        with self._lock:
            out += [
                "# HELP retryopt_http_requests_total HTTP requests by route, method and status.",
                "# TYPE retryopt_http_requests_total counter",
            ]
            for (route, method, status), n in sorted(self._requests.items()):
                lab = _labels((("route", route), ("method", method), ("status", status)))
                out.append(f"retryopt_http_requests_total{lab} {n}")
            out += [
                "# HELP retryopt_http_request_duration_seconds HTTP request latency by route.",
                "# TYPE retryopt_http_request_duration_seconds histogram",
            ]
            for route, buckets in sorted(self._latency.items()):
                cum = 0
                for bound, n in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
                    cum += n
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lab = _labels((("route", route), ("le", le)))
                    out.append(f"retryopt_http_request_duration_seconds_bucket{lab} {cum}")
                lab = _labels((("route", route),))
                out.append(
                    f"retryopt_http_request_duration_seconds_sum{lab} {self._latency_sum[route]!r}"
                )
                out.append(
                    f"retryopt_http_request_duration_seconds_count{lab} "
                    f"{self._latency_count[route]}"
                )
            out += [
                "# HELP retryopt_decisions_total Retry decisions by action, reason and policy.",
                "# TYPE retryopt_decisions_total counter",
            ]
            for (action, reason, policy), n in sorted(self._decisions.items()):
                lab = _labels((("action", action), ("reason", reason), ("policy", policy)))
                out.append(f"retryopt_decisions_total{lab} {n}")
            out += [
                "# HELP retryopt_model_reloads_total Model load attempts by outcome.",
                "# TYPE retryopt_model_reloads_total counter",
            ]
            for outcome, n in sorted(self._reloads.items()):
                out.append(f"retryopt_model_reloads_total{_labels((('outcome', outcome),))} {n}")
            out += [
                "# HELP retryopt_model_errors_total Model failures answered by the fallback.",
                "# TYPE retryopt_model_errors_total counter",
                f"retryopt_model_errors_total {self._fallback_errors}",
                "# HELP retryopt_microbatch_size Single requests per combined decision call.",
                "# TYPE retryopt_microbatch_size histogram",
            ]
            cum = 0
            for bound, n in zip((*MICROBATCH_BUCKETS, float("inf")), self._microbatch, strict=True):
                cum += n
                le = "+Inf" if bound == float("inf") else str(int(bound))
                out.append(f"retryopt_microbatch_size_bucket{_labels((('le', le),))} {cum}")
            out.append(f"retryopt_microbatch_size_sum {self._microbatch_sum}")
            out.append(f"retryopt_microbatch_size_count {cum}")
            out += self._render_store()
        out += [
            "# HELP retryopt_model_loaded 1 when a verified model is serving.",
            "# TYPE retryopt_model_loaded gauge",
            f"retryopt_model_loaded{_labels((('version', model_version or ''),))} "
            f"{1 if model_loaded else 0}",
        ]
        return "\n".join(out) + "\n"
