"""Latency and throughput of the field-classification service under load.

Starts ``cropstar serve`` (a real uvicorn process, out of the box: the packaged model over the demo
scene) on a free loopback port, then, for each number of concurrent clients, posts the same
``--fields``-field FeatureCollection (the demo's fields) to ``POST /v1/fields:classify`` as fast as
answers come back for ``--duration`` seconds. Every client is a task of one asyncio event loop in this
process; by default each request opens its own connection, as curl and one-off scripts do, so the
kernel spreads the requests over the server's worker processes. ``--keep-alive`` gives every client
one persistent connection instead: each is then served by one worker for the whole run, and 8 of them
rarely split evenly over 2 workers (docs/benchmarks.md). Each answer is checked (200,
``application/geo+json``, one feature per field, every field ``ok``); anything else counts as an error.

Prints and writes p50 / p90 / p99 / max latency, requests and fields per second and the errors per
client count (JSON at ``--out``, the latency distributions as a PNG beside it). Targets on a 2-core
machine: p99 ≤ 300 ms at 8 clients and ≤ 600 ms at 16, no errors.

``--pathological N`` adds N clients that post, back to back, polygons whose repair would take minutes
(a ring of 500 random vertices, 4,000 copies of one square in a MultiPolygon, eight rings of 2,000
random vertices): the good clients' latencies show what such requests cost the others, and the
pathological answers' own latencies (reported apart, each must be a 200, or a 503 ``busy`` after which
the client waits its ``Retry-After``: ``limits.large_requests``) how long they hold a worker.

    python benchmarks/service_load.py [--clients 1,8] [--duration 30] [--fields 50] [--workers 2] \
        [--pathological 8] [--out results/service_load_pathological.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.launch import ServerNotReady, serve_in_background

#: The p99 latency targets (ms) by number of clients.
TARGET_P99_MS = {8: 300.0, 16: 600.0}
START_TIMEOUT_S = 180
WARM_UP_REQUESTS = 10


def demo_request(n_fields: int) -> bytes:
    """The first ``n_fields`` fields of the demo scene as a FeatureCollection (what ``cropstar demo
    fields`` prints)."""
    from cropstar.data.synthetic import fields_geojson, make_scene
    from cropstar.model.default_model import DEMO_SCENE

    collection = fields_geojson(make_scene(**DEMO_SCENE).fields)
    if n_fields > len(collection["features"]):
        raise SystemExit(f"the demo scene has {len(collection['features'])} fields, asked for {n_fields}")
    collection["features"] = collection["features"][:n_fields]
    return json.dumps(collection, separators=(",", ":")).encode()


def pathological_request(seed: int = 0) -> bytes:
    """A FeatureCollection of invalid polygons whose repair by GEOS's ``linework`` method takes
    minutes (docs/rest-api.md, "Limits": the service repairs within ``limits.repair_seconds``)."""
    rng = np.random.default_rng(seed)

    def ring(vertices: int) -> list[list[float]]:
        points = (rng.uniform(0, 0.003, (vertices, 2)) + [11.57, 48.36]).tolist()  # on the demo scene
        return [*points, points[0]]

    square = [[11.57, 48.36], [11.571, 48.36], [11.571, 48.361], [11.57, 48.361], [11.57, 48.36]]
    geometries = [{"type": "Polygon", "coordinates": [ring(500)]},
                  {"type": "MultiPolygon", "coordinates": [[square]] * 4000},
                  *({"type": "Polygon", "coordinates": [ring(2000)]} for _ in range(8))]  # fmt: skip
    features = [{"type": "Feature", "properties": {"field_id": i}, "geometry": g} for i, g in enumerate(geometries)]
    return json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":")).encode()


@contextmanager
def served(workers: int, cache_dir: Path, log: Path) -> Iterator[str]:
    """``cropstar serve --workers N`` on a free port, ready; its base URL. Stopped afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROPSTAR_")}
    env.update(CROPSTAR_CACHE_DIR=str(cache_dir), CROPSTAR_WORK_DIR=str(log.parent / "work"))
    try:
        with serve_in_background(env, log, workers=workers, timeout=START_TIMEOUT_S) as url:
            yield url
    except ServerNotReady as error:
        raise SystemExit(str(error)) from None


def answer_problem(response: httpx.Response, n_fields: int) -> str | None:
    """Why ``response`` is not a full answer to an ``n_fields``-field request (None: it is)."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if not response.headers.get("content-type", "").startswith("application/geo+json"):
        return f"content type {response.headers.get('content-type')}"
    features = response.json()["features"]
    if len(features) != n_fields:
        return f"{len(features)} features for {n_fields} fields"
    statuses = {f["properties"]["status"] for f in features}
    return None if statuses == {"ok"} else f"field statuses {sorted(statuses)}"


async def _client(url: str, body: bytes, n_fields: int, until: float, latencies: list[float],
                  errors: list[str], keep_alive: bool) -> None:  # fmt: skip
    headers = {"content-type": "application/geo+json"}
    limits = httpx.Limits(max_keepalive_connections=None if keep_alive else 0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        while time.perf_counter() < until:
            start = time.perf_counter()
            try:
                response = await client.post("/v1/fields:classify", content=body, headers=headers)
                problem = answer_problem(response, n_fields)
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
            latencies.append(time.perf_counter() - start)
            if problem is not None:
                errors.append(problem)


async def _pathological_client(url: str, body: bytes, until: float, latencies: list[float], refused: list[float],
                               errors: list[str]) -> None:  # fmt: skip
    """Posts ``body`` back to back; an answer must be a 200 (its fields ``invalid_geometry`` or not), or a
    503 ``busy`` (``limits.large_requests``), after which the client waits its ``Retry-After``."""
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        while time.perf_counter() < until:
            start = time.perf_counter()
            wait = 0.0
            try:
                response = await client.post("/v1/fields:classify", content=body,
                                             headers={"content-type": "application/geo+json"})  # fmt: skip
                busy = response.status_code == 503 and response.json().get("type", "").endswith(":busy")
                problem = None if response.status_code == 200 or busy else (
                    f"HTTP {response.status_code}: {response.text[:200]}"
                )
                wait = float(response.headers.get("retry-after", 0)) if busy else 0.0
            except httpx.HTTPError as error:
                busy, problem = False, f"{type(error).__name__}: {error}"
            (refused if busy else latencies).append(time.perf_counter() - start)
            if problem is not None:
                errors.append(problem)
            await asyncio.sleep(wait)


async def load(url: str, body: bytes, n_fields: int, clients: int, duration: float,
               keep_alive: bool = False, pathological: int = 0) -> dict[str, Any]:  # fmt: skip
    """``clients`` concurrent clients posting ``body`` back to back for ``duration`` seconds, beside
    ``pathological`` clients posting :func:`pathological_request`."""
    latencies: list[float] = []
    errors: list[str] = []
    bad_latencies: list[float] = []
    bad_errors: list[str] = []
    bad_refused: list[float] = []
    start, cpu = time.perf_counter(), time.process_time()
    until = start + duration
    bad_body = pathological_request()
    await asyncio.gather(
        *(_client(url, body, n_fields, until, latencies, errors, keep_alive) for _ in range(clients)),
        *(_pathological_client(url, bad_body, until, bad_latencies, bad_refused, bad_errors)
          for _ in range(pathological)),
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    ms = np.asarray(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": seconds,
        "requests_per_s": len(latencies) / seconds,
        "fields_per_s": len(latencies) * n_fields / seconds,
        "client_cores_busy": cpu / seconds,  # the load generator's own share of this machine's cores
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "latency_ms": {name: float(np.percentile(ms, q)) for name, q in
                       (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))} | {"mean": float(ms.mean())},
        "latencies_ms": ms.round(2).tolist(),
        "pathological": _pathological_summary(bad_latencies, bad_refused, bad_errors) if pathological else None,
    }  # fmt: skip


def _pathological_summary(latencies: list[float], refused: list[float], errors: list[str]) -> dict[str, Any]:
    def percentiles(seconds: list[float]) -> dict[str, float]:
        ms = np.asarray(seconds) * 1000
        return {name: float(np.percentile(ms, q)) for name, q in (("p50", 50), ("p99", 99), ("max", 100))} if len(ms) else {}

    return {"requests": len(latencies), "errors": len(errors), "error_examples": sorted(set(errors))[:5],
            "latency_ms": percentiles(latencies),
            "refused_busy": len(refused), "refused_latency_ms": percentiles(refused)}  # fmt: skip


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """The latency distribution (empirical CDF) of each client count, the target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for run in runs:
        ms = np.sort(run["latencies_ms"])
        axes.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=f"{run['clients']} client(s)")
    for clients, target in TARGET_P99_MS.items():
        axes.axvline(target, color="grey", linestyle="--", label=f"target p99 at {clients} clients: {target:.0f} ms")
    axes.axhline(0.99, color="grey", linestyle=":")
    axes.set(xlabel="latency (ms)", ylabel="fraction of requests", title=title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["settings"]
    table = Table(title=f"POST /v1/fields:classify, {s['fields']} fields per request, {s['workers']} worker(s), "
                        f"{s['duration_s']:.0f} s per row, "
                        f"{'a persistent connection per client' if s['keep_alive'] else 'a connection per request'}")  # fmt: skip
    for column in ("clients", "requests", "req/s", "fields/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors",
                   "client cores"):  # fmt: skip
        table.add_column(column, justify="right")
    for run in result["runs"]:
        lat = run["latency_ms"]
        table.add_row(str(run["clients"]), str(run["requests"]), f"{run['requests_per_s']:.1f}",
                      f"{run['fields_per_s']:,.0f}", f"{lat['p50']:.0f}", f"{lat['p90']:.0f}", f"{lat['p99']:.0f}",
                      f"{lat['max']:.0f}", str(run["errors"]), f"{run['client_cores_busy']:.2f}")  # fmt: skip
    console = Console(width=120)
    console.print(table)
    for run in result["runs"]:
        for example in run["error_examples"]:
            console.print(f"[red]error ({run['clients']} clients):[/] {example}", highlight=False)
        bad = run["pathological"]
        if bad:
            lat = bad["latency_ms"]
            console.print(f"beside {s['pathological_clients']} pathological clients: {bad['requests']} of their "
                          f"requests answered, p50 {lat.get('p50', 0):.0f} ms, max {lat.get('max', 0):.0f} ms; "
                          f"{bad['refused_busy']} refused as busy, max "
                          f"{bad['refused_latency_ms'].get('max', 0):.0f} ms; {bad['errors']} errors "
                          f"{bad['error_examples']}", highlight=False)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per client count")
    parser.add_argument("--fields", type=int, default=50, help="fields per request (from the demo's 84)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server worker processes")
    parser.add_argument("--keep-alive", action="store_true", help="one persistent connection per client")
    parser.add_argument("--pathological", type=int, default=0,
                        help="clients posting polygons whose repair would take minutes, beside the others")
    parser.add_argument("--cache-dir", type=Path, help="the service's cache (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("results/service_load.json"))
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    body = demo_request(args.fields)

    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "cache"
        with served(args.workers, cache, Path(tmp) / "server.log") as url:
            for _ in range(WARM_UP_REQUESTS * args.workers):  # every worker's first requests (lazy set-up)
                problem = answer_problem(
                    httpx.post(f"{url}/v1/fields:classify", content=body,
                               headers={"content-type": "application/geo+json"}, timeout=120), args.fields,
                )  # fmt: skip
                if problem is not None:
                    raise SystemExit(f"the warm-up request failed: {problem}")
            runs = [asyncio.run(load(url, body, args.fields, n, args.duration, args.keep_alive, args.pathological))
                    for n in counts]  # fmt: skip

    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "settings": {"fields": args.fields, "workers": args.workers, "duration_s": args.duration,
                     "clients": counts, "keep_alive": args.keep_alive, "request_bytes": len(body),
                     "pathological_clients": args.pathological,
                     "target_p99_ms": {str(n): ms for n, ms in TARGET_P99_MS.items()}},
        "runs": runs,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    png = args.out.with_suffix(".png")
    plot(runs, png, f"{args.fields}-field requests, {args.workers} worker(s)")
    report(result)
    for run in runs:
        target = TARGET_P99_MS.get(run["clients"])
        if target is None:
            continue
        met = run["latency_ms"]["p99"] <= target and run["errors"] == 0 and (
            (run["pathological"] or {}).get("errors", 0) == 0
        )
        print(f"p99 at {run['clients']} clients: {run['latency_ms']['p99']:.0f} ms "
              f"(target ≤ {target:.0f} ms, no errors): {'met' if met else 'NOT met'}")  # fmt: skip
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
