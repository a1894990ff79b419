"""``llmsvc eval run|show|compare``: eval runs through the gateway's HTTP API.

The gateway URL and key come from ``--base-url``/``--api-key``, else
``$LLMSVC_BASE_URL``/``$LLMSVC_API_KEY``, else the embedded defaults
(``http://127.0.0.1:8000`` and the key ``llmsvc up`` keeps in its home).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

console = Console()
FINAL = {"succeeded", "failed", "cancelled"}


def add_client_args(p) -> None:
    p.add_argument("--base-url", default=os.environ.get("LLMSVC_BASE_URL", "http://127.0.0.1:8000"),
                   help="gateway URL without /v1 (default $LLMSVC_BASE_URL or http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=os.environ.get("LLMSVC_API_KEY"), help="API key (default $LLMSVC_API_KEY)")


def client(args) -> httpx.Client:
    key = args.api_key
    if not key:
        path = Path(os.environ.get("LLMSVC_HOME", Path.home() / ".llmsvc")) / "api_key"
        key = path.read_text().strip() if path.exists() else ""
    return httpx.Client(base_url=args.base_url.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=1800)


def check(resp: httpx.Response) -> dict:
    body = resp.json()
    if resp.status_code >= 400:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        console.print(f"[red]error {resp.status_code}:[/] {err.get('message', resp.text)}")
        raise SystemExit(1 if resp.status_code < 500 else 2)
    return body


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="run and compare evals of model versions")
    esub = p.add_subparsers(dest="eval_command", required=True)
    run = esub.add_parser("run", help="start an eval run (and wait for it)")
    run.add_argument("model", help="version id or alias")
    run.add_argument("suite", help="perplexity, tiny_chat, gsm8k, multiple_choice or lm_eval")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="suite parameter; VALUE is parsed as JSON when it can be (repeatable)")
    run.add_argument("--no-wait", action="store_true", help="print the run id and return")
    show = esub.add_parser("show", help="show one run")
    show.add_argument("run_id")
    show.add_argument("--samples", type=int, default=0, help="also print the first N per-sample records")
    cmp_ = esub.add_parser("compare", help="side-by-side metrics of two model versions")
    cmp_.add_argument("model_a")
    cmp_.add_argument("model_b")
    cmp_.add_argument("--suite", help="only this suite")
    for q in (run, show, cmp_):
        add_client_args(q)
    p.set_defaults(func=dispatch)


def dispatch(args) -> int:
    return {"run": cmd_run, "show": cmd_show, "compare": cmd_compare}[args.eval_command](args)


def parse_params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param needs KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_run(args) -> int:
    with client(args) as c:
        run = check(c.post("/v1/evals", json={"model": args.model, "suite": args.suite,
                                              "params": parse_params(args.param)}))
        console.print(f"eval run [bold]{run['id']}[/] ({run['suite']} on {run['model_version']}) {run['status']}")
        if args.no_wait:
            return 0
        while run["status"] not in FINAL:
            time.sleep(2)
            run = check(c.get(f"/v1/evals/{run['id']}"))
    print_run(run)
    return 0 if run["status"] == "succeeded" else 1


def cmd_show(args) -> int:
    with client(args) as c:
        run = check(c.get(f"/v1/evals/{args.run_id}", params={"include_samples": bool(args.samples)}))
    print_run(run)
    for rec in run.get("samples", [])[: args.samples]:
        console.print_json(json.dumps(rec))
    return 0


def fmt(m: dict | None) -> str:
    return "—" if m is None else f"{m['value']:.4g} ± {m['stderr']:.2g}"


def print_run(run: dict) -> None:
    console.print(f"[bold]{run['id']}[/]  {run['suite']}  {run['model']} → {run['model_version']}  "
                  f"status={run['status']}  samples={run['samples_done']}/{run['sample_count']}  "
                  f"{run['duration_s']:.1f}s")
    if run.get("error"):
        console.print(f"[red]{run['error']}[/]")
    table = Table("metric", "value ± stderr", "95% interval")
    for name, m in run["metrics"].items():
        table.add_row(name, fmt(m), f"[{m['ci_low']:.4g}, {m['ci_high']:.4g}]")
    if run["metrics"]:
        console.print(table)


def latest_by_suite(runs: list[dict], suite: str | None) -> dict[tuple[str, str], dict]:
    """The newest succeeded run per (suite, params) — runs with other params are not comparable."""
    out: dict[tuple[str, str], dict] = {}
    for r in sorted(runs, key=lambda r: r["created_at"]):
        if r["status"] == "succeeded" and (suite is None or r["suite"] == suite):
            out[(r["suite"], json.dumps(r["params"], sort_keys=True))] = r
    return out


def compare_rows(a: dict, b: dict) -> list[tuple[str, dict | None, dict | None]]:
    rows = []
    for key in sorted(set(a) | set(b)):
        ma, mb = a.get(key, {}).get("metrics", {}), b.get(key, {}).get("metrics", {})
        for metric in sorted(set(ma) | set(mb)):
            rows.append((f"{key[0]}/{metric}", ma.get(metric), mb.get(metric)))
    return rows


def cmd_compare(args) -> int:
    with client(args) as c:
        a = latest_by_suite(check(c.get("/v1/evals", params={"model": args.model_a}))["data"], args.suite)
        b = latest_by_suite(check(c.get("/v1/evals", params={"model": args.model_b}))["data"], args.suite)
    table = Table("suite/metric", args.model_a, args.model_b, "Δ (b − a)")
    for name, ma, mb in compare_rows(a, b):
        delta = f"{mb['value'] - ma['value']:+.4g}" if ma and mb else "—"
        table.add_row(name, fmt(ma), fmt(mb), delta)
    console.print(table)
    if not a or not b:
        console.print("[yellow]no succeeded runs for one side; run `llmsvc eval run` first[/]")
    return 0
