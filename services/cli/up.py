"""``llmsvc up``: every service as a local process on the embedded defaults."""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .stack import Stack, StackConfig, free_port, port_in_use

console = Console(stderr=True, soft_wrap=True)  # never wrap: the curl line must paste whole


def default_home() -> Path:
    return Path(os.environ.get("LLMSVC_HOME", Path.home() / ".llmsvc"))


STEPS_ENV = "LLMSVC_TINY_CHAT_STEPS"
"""Train the first-run tiny-chat for this many optimizer steps instead of the recipe's (1,400): a quicker,
weaker model, for a first look on a slow machine (and the quick-start test)."""


def build_overrides(environ: dict[str, str]) -> dict:
    """The tiny-chat build's overrides from :data:`STEPS_ENV`: fewer steps see proportionally fewer
    conversations (the recipe's ~107 a step); {} when unset."""
    from trainer.spec import TINY_CHAT_HYPERPARAMETERS

    recipe_steps = TINY_CHAT_HYPERPARAMETERS["steps"]
    raw = environ.get(STEPS_ENV, "").strip()
    if not raw:
        return {}
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{STEPS_ENV}={raw!r}: give a whole number of training steps (the recipe's is "
                         f"{recipe_steps}), or unset it")
    steps = int(raw)
    return {"hyperparameters": {"steps": steps, "warmup_steps": min(50, max(1, steps // 10))},
            "tiny_chat": {"examples": max(1000, min(200_000, steps * 107))}}


def ensure_default_model(home: Path, overrides: dict | None = None) -> Path:
    """Train the tiny-chat default model on first run (a few minutes on CPU, with a progress bar); reuse it
    afterwards. An interrupted build resumes from its last checkpoint on the next run."""
    import trainer

    path = home / "models" / "tiny-chat"
    if (path / "config.json").exists():
        return path
    trainer.claim_the_cores()  # before torch loads; nothing else of the stack runs yet
    from trainer.tiny_chat import build

    overrides = overrides or {}
    steps = overrides.get("hyperparameters", {}).get("steps")
    console.print("Training the default model [bold]tiny-chat[/] (first run only; a few minutes on CPU)…"
                  if steps is None else
                  f"Training the default model [bold]tiny-chat[/] for {steps} steps ({STEPS_ENV}; fewer than the "
                  f"recipe's make a weaker model)…")
    if not console.is_terminal:
        # Piped to a log (a container, a service manager): a bar would show only at the end; print lines.
        build(path, overrides=overrides, progress=_log_progress(time.monotonic()))
        return path
    with Progress(TextColumn("[bold]tiny-chat[/]"), BarColumn(), TextColumn("{task.description}"),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("starting", total=None)
        build(path, overrides=overrides,
              progress=lambda step, total, label: progress.update(task, completed=step, total=total,
                                                                  description=label))
    return path


def _log_progress(t0: float):
    """A build progress callback that prints a line at each tenth of the build and at each new stage."""
    last = {"tenth": -1, "stage": ""}

    def report(step: int, total: int, label: str) -> None:
        tenth, stage = step * 10 // max(1, total), label.split(" ")[0]
        if tenth != last["tenth"] or stage != last["stage"]:
            last.update(tenth=tenth, stage=stage)
            console.print(f"tiny-chat {step}/{total} ({time.monotonic() - t0:.0f} s): {label}")

    return report


def load_or_create_key(home: Path, given: str | None) -> str:
    if given:
        return given
    path = home / "api_key"
    if path.exists():
        return path.read_text().strip()
    key = "sk-" + secrets.token_urlsafe(32)
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def run_up(args) -> int:
    home = Path(args.home) if args.home else default_home()
    if port_in_use(args.port, args.host):
        console.print(f"[red]Port {args.port} is already in use.[/] Stop what runs there or pass --port.")
        return 2
    if args.model:
        model = Path(args.model).expanduser().resolve()
        if not (model / "config.json").exists():
            console.print(f"[red]{model} is not a Hugging Face model directory[/] (no config.json).")
            return 2
    else:
        try:
            overrides = build_overrides(os.environ)
        except ValueError as exc:
            console.print(f"[red]{exc}[/]")
            return 2
        model = ensure_default_model(home, overrides)
    key = load_or_create_key(home, args.api_key or os.environ.get("LLMSVC_API_KEY"))
    from services.auth import keys

    if not keys.well_formed(key):
        console.print(f"[red]The API key must be {keys.MIN_LEN}-{keys.MAX_LEN} printable ASCII characters without "
                      "spaces.[/] Pass a longer --api-key (or unset LLMSVC_API_KEY to get a generated one).")
        return 2
    cfg = StackConfig(home=home, model=model, api_key=key, host=args.host, gateway_port=args.port,
                      worker_ports=[50060 + i for i in range(args.workers)],
                      served_model_name=args.served_model_name or "",
                      spare_worker_ports=[50060 + args.workers],
                      embed_port=50060 + args.workers + 1 if args.embeddings else 0)
    if not args.model and not args.served_model_name:
        # The built model is a registry version (tiny-chat-v1, alias tiny-chat): registry commands work at once.
        from .default_version import ensure_default_version

        cfg.served_model_name, cfg.model_aliases = ensure_default_version(cfg.db_url, model)
    internal = [cfg.auth_port, cfg.router_port, cfg.eval_port, cfg.trainer_port, *cfg.worker_ports,
                *cfg.spare_worker_ports, *([cfg.embed_port] if cfg.embed_port else [])]
    if any(port_in_use(p, cfg.internal_host) for p in internal):
        # Another stack (or anything else) holds the default internal ports: take free ones.
        ih = cfg.internal_host
        cfg.auth_port, cfg.router_port = free_port(ih), free_port(ih)
        cfg.worker_ports = [free_port(ih) for _ in range(args.workers)]
        cfg.eval_port, cfg.spare_worker_ports = free_port(ih), [free_port(ih)]
        cfg.trainer_port = free_port(ih)
        cfg.embed_port = free_port(ih) if cfg.embed_port else 0
    stack = Stack(cfg)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    def tick() -> None:
        if stopping:
            raise KeyboardInterrupt

    stack.start()
    try:
        with console.status(f"starting {len(stack.procs)} services (the vLLM engine takes about a minute on CPU)…"):
            stack.wait_ready(timeout_s=args.timeout, on_tick=tick)
    except KeyboardInterrupt:
        console.print("stopping…")
        stack.stop()
        return 130
    except (RuntimeError, TimeoutError) as exc:
        console.print(f"[red]start-up failed:[/] {exc}")
        stack.stop()
        return 1
    name = (cfg.model_aliases or [cfg.served_model_name or model.name])[0]
    console.print(f"""
[bold green]llmsvc is up[/]  ({len(stack.procs)} processes, logs in {stack.logs})
  API      {cfg.base_url}
  API key  {key}
  model    {name}{f"  (embeddings: {cfg.embed_model_name})" if cfg.embed_port else ""}

  curl {cfg.base_url}/chat/completions -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
    -d '{{"model": "{name}", "messages": [{{"role": "user", "content": "Hello"}}], "stream": true}}'

Press Ctrl-C to stop.""")
    while not stopping:
        # A worker that exited cleanly was drained (a promotion moved its alias elsewhere): not a failure.
        if dead := [p for p in stack.dead() if not (p.name.startswith("worker") and p.popen.returncode == 0)]:
            console.print(f"[red]{', '.join(p.name for p in dead)} exited;[/] see {stack.logs}. Stopping.")
            break
        time.sleep(0.5)
    console.print("stopping…")
    stack.stop()
    console.print("stopped.")
    return 0
