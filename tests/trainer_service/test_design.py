"""The control plane's contracts with the job code, checked statically: one recipe list, one spec error, and a
runner interface that declares every runner method the control plane calls."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import services.trainer.spec as control
import trainer.recipes as recipes
import trainer.spec as job
from services.cli.main import build_parser
from services.trainer.runners.base import Runner

ROOT = Path(__file__).resolve().parents[2]


def test_there_is_one_recipe_list():
    assert control.RECIPES is job.RECIPES
    assert list(recipes.RECIPES) == list(job.RECIPES)
    for module in recipes.RECIPES.values():  # each recipe has its module, with a setup
        assert callable(importlib.import_module(f"trainer.recipes.{module}").setup)
    for name in job.RECIPES:  # `llmsvc train submit --recipe` takes each
        args = build_parser().parse_args(["train", "submit", "d.jsonl", "--model", "m", "--recipe", name])
        assert args.recipe == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "submit", "d.jsonl", "--model", "m", "--recipe", "nope"])
    assert set(control.BASE_LR) == set(job.RECIPES)


def test_there_is_one_spec_error():
    assert control.SpecError is job.SpecError
    assert job.SpecError("bad", "recipe").param == "recipe"


def test_the_runner_interface_declares_every_method_the_control_plane_calls():
    called = set()
    for path in (ROOT / "services" / "trainer").glob("*.py"):
        called |= set(re.findall(r"\brunner\.([a-z_]+)", path.read_text()))
    assert called, "the control plane calls its runner"
    missing = {name for name in called if not hasattr(Runner, name) and name not in Runner.__annotations__}
    assert not missing, f"Runner does not declare {sorted(missing)}"
    assert {"start", "state", "stop", "memory_budget"} <= Runner.__abstractmethods__
