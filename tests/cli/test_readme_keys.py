"""README's key commands ("## Auth: keys, limits, usage"), each line run as written by the installed ``llmsvc``
console script, in the README's order, against gateway → auth as processes (and the trainer; no router or worker:
nothing here generates, so the usage shown is empty).

The CLI finds the gateway and the admin key where the README says it looks: ``$LLMSVC_URL`` (the default of
``--url``) and ``$LLMSVC_API_KEY``. ``KEY_ID`` is the id the ``create`` line printed; a ``[…]`` part is run
both left out and given.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.readme import block, variants
from tests.trainer_service.helpers import trainer_only_stack

KEYS = block("## Auth: keys, limits, usage", "bash")


@pytest.fixture(scope="module")
def keys_stack(tmp_path_factory, default_model, api_key):
    with trainer_only_stack(tmp_path_factory.mktemp("keys-stack"), default_model, api_key) as stack:
        yield stack


def test_the_readme_key_commands_run_as_written(keys_stack, api_key, tmp_path):
    env = {**os.environ, "LLMSVC_URL": keys_stack.cfg.base_url, "LLMSVC_API_KEY": api_key,
           "LLMSVC_HOME": str(tmp_path), "COLUMNS": "200"}
    exe = Path(sys.executable).parent / "llmsvc"
    key_id, outputs = None, []
    lines = KEYS.commands()
    assert [w[:3] for w in lines] == [["llmsvc", "keys", a] for a in ("create", "list", "usage", "revoke")]
    for words in lines:
        for args in variants(words):
            args = [key_id if w == "KEY_ID" else w for w in args]
            res = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=60, env=env)
            assert res.returncode == 0, f"README: `{' '.join(args)}` failed:\n{res.stdout}{res.stderr}"
            outputs.append((args, res.stdout))
            if args[2] == "create":
                (key_id,) = set(re.findall(r"\b[0-9a-f]{32}\b", res.stdout))
                assert re.search(r"^key\s+sk-", res.stdout, re.M), res.stdout  # the secret, shown once
            elif args[2] == "list":
                assert key_id in res.stdout, res.stdout
            elif args[2] == "usage":
                assert f"usage of {key_id}" in res.stdout and "total" in res.stdout
            else:
                assert f"revoked {key_id}" in res.stdout
    assert [a[2] for a, _ in outputs] == ["create", "list", "list", "usage", "usage", "revoke"]
    # The key has what the create line asked for, and the revoke line revoked it.
    key = httpx.get(f"{keys_stack.cfg.base_url}/admin/keys/{key_id}", timeout=30,
                    headers={"Authorization": f"Bearer {api_key}"}).json()
    assert (key["name"], key["owner"], key["rpm"], key["tpm"], key["daily_token_quota"], key["allowed_models"]) == (
        "alice", "team-a", 60, 100000, 2000000, ["tiny-chat"])
    assert key["revoked_at"]
