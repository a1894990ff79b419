"""``llmsvc train submit|list|logs|cancel``: fine-tuning jobs through the gateway's OpenAI API.

``submit`` uploads a JSONL file (or takes an uploaded ``file-…`` id) and creates
a job; ``logs -f`` follows the job's events (server-sent events) until it ends
and exits 0 only if it succeeded. The URL and key are those of ``llmsvc eval``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.table import Table

from trainer.spec import RECIPES

from .eval import FINAL, add_client_args, check, client, console


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="submit, list, follow and cancel fine-tuning jobs (through the gateway)")
    actions = p.add_subparsers(dest="action", required=True)
    s = actions.add_parser("submit", help="upload data and create a fine-tuning job")
    s.add_argument("data", help="JSONL file to upload, or the id of an uploaded file (file-…)")
    s.add_argument("--model", required=True, help="base: a version id or alias, a model in the store, or preset:<name>")
    s.add_argument("--suffix", help="name of the resulting model (default: <base>-ft)")
    s.add_argument("--validation", help="validation JSONL file or file id")
    s.add_argument("--method", choices=["supervised", "dpo"], default="supervised")
    s.add_argument("--recipe", choices=RECIPES, help="override the recipe")
    for flag, kind, dest in (("--epochs", int, "n_epochs"), ("--batch-size", int, "batch_size"),
                             ("--lr-multiplier", float, "learning_rate_multiplier"), ("--steps", int, "steps"),
                             ("--lr", float, "lr"), ("--seq-len", int, "seq_len")):
        s.add_argument(flag, type=kind, dest=dest)
    s.add_argument("--lora", action="store_true", help="train a LoRA adapter")
    s.add_argument("--lora-r", type=int, help="LoRA rank (implies --lora)")
    s.add_argument("--merge-lora", action="store_true", help="merge the adapter into the base weights")
    s.add_argument("--checkpoint-every", type=int)
    s.add_argument("--nproc", type=int, help="processes per node (torchrun)")
    s.add_argument("--nodes", type=int, help="nodes (Kubernetes runner)")
    s.add_argument("-f", "--follow", action="store_true", help="follow the job's events until it ends")
    s.set_defaults(func=cmd_submit)
    ls = actions.add_parser("list", help="list jobs, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=cmd_list)
    lg = actions.add_parser("logs", help="print a job's events")
    lg.add_argument("job_id")
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the job ends; exit 0 if it succeeded")
    lg.set_defaults(func=cmd_logs)
    c = actions.add_parser("cancel", help="cancel a job (it checkpoints and stops)")
    c.add_argument("job_id")
    c.set_defaults(func=cmd_cancel)
    for action in (s, ls, lg, c):
        add_client_args(action)


def _upload(http, ref: str) -> str:
    if ref.startswith("file-"):
        return ref
    path = Path(ref)
    if not path.is_file():
        raise SystemExit(f"{ref}: no such file")
    with path.open("rb") as f:
        doc = check(http.post("/v1/files", files={"file": (path.name, f, "application/jsonl")},
                              data={"purpose": "fine-tune"}))
    console.print(f"uploaded {path} as {doc['id']} ({doc['bytes']} bytes)")
    return doc["id"]


def job_body(args, training_file: str, validation_file: str | None) -> dict:
    hyper = {k: getattr(args, k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier", "steps", "lr",
                                           "seq_len") if getattr(args, k) is not None}
    body = {"model": args.model, "training_file": training_file, "method": {"type": args.method},
            "hyperparameters": hyper}
    optional = {"validation_file": validation_file, "suffix": args.suffix, "recipe": args.recipe,
                "checkpoint_every": args.checkpoint_every, "merge_lora": args.merge_lora or None}
    body |= {k: v for k, v in optional.items() if v is not None}
    if args.lora or args.lora_r:
        body["lora"] = {"r": args.lora_r} if args.lora_r else True
    resources = {k: v for k, v in (("nodes", args.nodes), ("nproc_per_node", args.nproc)) if v}
    if resources:
        body["resources"] = resources
    return body


def cmd_submit(args) -> int:
    with client(args) as http:
        training = _upload(http, args.data)
        validation = _upload(http, args.validation) if args.validation else None
        job = check(http.post("/v1/fine_tuning/jobs", json=job_body(args, training, validation)))
    console.print(f"created [bold]{job['id']}[/] ({job['status']}); follow it with: llmsvc train logs -f {job['id']}")
    if args.follow:
        args.job_id = job["id"]
        return cmd_logs(args)
    return 0


def cmd_list(args) -> int:
    with client(args) as http:
        doc = check(http.get("/v1/fine_tuning/jobs", params={"limit": args.limit}))
    table = Table("id", "status", "model", "fine_tuned_model", "created")
    for j in doc["data"]:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(j["created_at"]))
        table.add_row(j["id"], j["status"], j["model"], j["fine_tuned_model"] or "", created)
    console.print(table)
    return 0


def print_event(ev: dict) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(ev["created_at"]))
    style = {"error": "red", "warn": "yellow"}.get(ev["level"], "")
    console.print(f"{stamp} {ev['message']}", style=style or None, markup=False, highlight=False)


def cmd_logs(args) -> int:
    with client(args) as http:
        if args.follow:
            with http.stream("GET", f"/v1/fine_tuning/jobs/{args.job_id}/events", params={"stream": "true"}) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    check(resp)
                for line in resp.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        doc = json.loads(line[len("data: "):])
                        if "error" in doc:
                            raise SystemExit(f"error: {doc['error']['message']}")
                        print_event(doc)
        else:
            for ev in reversed(_all_events(http, args.job_id)):
                print_event(ev)
        job = check(http.get(f"/v1/fine_tuning/jobs/{args.job_id}"))
    if job["status"] in FINAL:
        result = f" → {job['fine_tuned_model']}" if job["fine_tuned_model"] else ""
        console.print(f"{job['id']}: {job['status']}{result}")
    return 0 if job["status"] == "succeeded" or not args.follow else 1


def _all_events(http, job_id: str) -> list[dict]:
    events, after = [], ""
    while True:
        doc = check(http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100, "after": after}))
        events += doc["data"]
        if not doc["has_more"] or not doc["data"]:
            return events
        after = doc["data"][-1]["id"]


def cmd_cancel(args) -> int:
    with client(args) as http:
        job = check(http.post(f"/v1/fine_tuning/jobs/{args.job_id}/cancel"))
    console.print(f"{job['id']}: {job['status']}")
    return 0
