"""The ``llmsvc`` command line."""

from __future__ import annotations

import argparse
import sys


def _service(module: str):
    def run(_args) -> int:
        import importlib

        importlib.import_module(module).main()
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmsvc",
                                     description="Train, evaluate and serve LLMs behind an OpenAI-compatible API.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run every service locally (embedded mode)")
    up.add_argument("--model", help="Hugging Face model directory to serve (default: the built-in tiny model)")
    up.add_argument("--served-model-name", help="name clients use for the model (default: the directory name)")
    up.add_argument("--api-key", help="API key to accept (default: $LLMSVC_API_KEY, else one generated and kept)")
    up.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="gateway HTTP port (default 8000)")
    up.add_argument("--workers", type=int, default=1, help="number of vLLM workers (default 1)")
    up.add_argument("--no-embeddings", dest="embeddings", action="store_false",
                    help="do not start the embedding worker (<model>-embed on vLLM's pooling runner)")
    up.add_argument("--home", help="state folder (default $LLMSVC_HOME or ~/.llmsvc)")
    up.add_argument("--timeout", type=float, default=600, help="seconds to wait for start-up")
    up.set_defaults(func=lambda a: __import__("services.cli.up", fromlist=["run_up"]).run_up(a))

    from . import db

    db.add_parser(sub)
    from . import eval as eval_cli

    eval_cli.add_parser(sub)
    sub.add_parser("eval-service", help="run the eval service in the foreground (configured by LLMSVC_EVAL_*)"
                   ).set_defaults(func=_service("services.eval.main"))
    from . import keys

    keys.add_parser(sub)
    from . import models, train

    train.add_parser(sub)
    models.add_parser(sub)

    for name, module in [("gateway", "services.gateway.main"), ("auth", "services.auth.main"),
                         ("router", "services.router.main"), ("worker", "services.worker.main"),
                         ("trainer", "services.trainer.main")]:
        p = sub.add_parser(
            name, help=f"run the {name} service in the foreground (configured by LLMSVC_{name.upper()}_*)")
        p.set_defaults(func=_service(module))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
