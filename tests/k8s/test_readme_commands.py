"""The README's Kubernetes commands, read from README.md as written and checked offline against what they name.

No cluster runs them here (that would need a Kubernetes API server with GPUs and a shared filesystem): each
``kubectl apply -f`` file exists and holds the objects the later lines name, in the one namespace every line
uses; each ``helm install`` renders and lints clean (the real Helm Go SDK, as tests/chart does) with its values
file, and the Secrets that install reads without rendering them are the ones the block creates, with their
keys; ``helm test`` has a test Pod to run; the Jobs block follows Jobs, a Deployment and a model path that the
manifests and the chart really create.
"""

from __future__ import annotations

import json
import re

import helm_python
import yaml

from tests.chart.helpers import CHART, K8S_VERSION, by_kind, chart, deep_merge
from tests.readme import ROOT, block

INSTALL = block("## Kubernetes", "bash")
JOBS = block("### Training and eval Jobs with kubectl", "bash")


def _options(words: list[str], *names: str) -> list[str]:
    """Values of ``-n x``, ``--namespace=x`` and the like."""
    values = []
    for i, w in enumerate(words):
        if w in names:
            values.append(words[i + 1])
        values += [w.split("=", 1)[1] for n in names if n.startswith("--") and w.startswith(n + "=")]
    return values


def _applied_docs(words: list[str]) -> list[dict]:
    """The objects one ``kubectl apply -f …`` line applies."""
    docs = []
    for path in _options(words, "-f", "--filename"):
        assert (ROOT / path).is_file(), f"README: {' '.join(words)}: no file {path}"
        docs += [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d]
    return docs


def _applied(b) -> list[dict]:
    return [d for words in b.commands() if words[:2] == ["kubectl", "apply"] for d in _applied_docs(words)]


def _namespace() -> str:
    (ns,) = [d["metadata"]["name"] for d in _applied(INSTALL) if d["kind"] == "Namespace"]
    return ns


def _installs() -> list[tuple[str, dict]]:
    """(release, values of its -f files) of each ``helm install`` line."""
    out = []
    for words in INSTALL.commands():
        if words[:2] == ["helm", "install"]:
            release, chart_dir = words[2], words[3]
            assert (ROOT / chart_dir).resolve() == CHART, words
            values: dict = {}
            for path in _options(words, "-f", "--values"):
                assert (ROOT / path).is_file(), f"README: {' '.join(words)}: no file {path}"
                values = deep_merge(values, yaml.safe_load((ROOT / path).read_text()))
            out.append((release, values))
    return out


def _render(release: str, values: dict) -> list[dict]:
    rendered = chart().render(values, name=release, namespace=_namespace(), is_install=True)
    return [d for path, text in sorted(rendered.items()) if not path.endswith(".txt")
            for d in yaml.safe_load_all(text) if d]


def _secret_refs(obj) -> set[tuple[str, str]]:
    if isinstance(obj, dict):
        refs = {(obj["secretKeyRef"]["name"], obj["secretKeyRef"]["key"])} if "secretKeyRef" in obj else set()
        return refs.union(*(_secret_refs(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(_secret_refs(v) for v in obj))
    return set()


def test_every_line_works_in_the_namespace_the_block_creates():
    ns = _namespace()
    for b in (INSTALL, JOBS):
        for words in b.commands():
            if words[:2] == ["kubectl", "apply"]:
                for doc in _applied_docs(words):
                    assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == ns, doc["metadata"]
            else:
                assert _options(words, "-n", "--namespace") == [ns], f"README ({b.heading}): {' '.join(words)}"


def test_each_helm_install_lints_clean_with_its_values_file():
    installs = _installs()
    assert len(installs) >= 1
    for release, values in installs:
        report = helm_python.lint(CHART, values, strict=True, namespace=_namespace(), kube_version=f"v{K8S_VERSION}")
        assert report["errors"] == [], (release, report)
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], (release, report)
        assert _render(release, values)


def test_the_secrets_created_are_those_the_external_database_install_reads():
    created: set[tuple[str, str]] = set()
    for words in INSTALL.commands():
        if words[:1] == ["kubectl"] and "create" in words and "secret" in words:
            name = words[words.index("generic") + 1]
            created |= {(name, lit.split("=", 1)[0]) for lit in _options(words, "--from-literal")}
    assert created, "README: the Kubernetes block creates no Secret"
    needed_somewhere = set()
    for release, values in _installs():
        docs = _render(release, values)
        own = {d["metadata"]["name"] for d in by_kind(docs, "Secret")}
        needed = {ref for ref in _secret_refs(docs) if ref[0] not in own}
        assert needed <= created, f"helm install {release} reads Secrets the README never creates: {needed - created}"
        needed_somewhere |= needed
    # Nothing created for nothing: every Secret the block makes is one an install reads.
    assert created == needed_somewhere


def test_helm_test_has_a_test_pod_to_run():
    releases = {release for release, _ in _installs()}
    tested = [words for words in INSTALL.commands() if words[:2] == ["helm", "test"]]
    assert tested
    for words in tested:
        assert words[2] in releases
        for release, values in _installs():
            hooks = [d for d in _render(release, values)
                     if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
            assert [d["kind"] for d in hooks] == ["Pod"], release


def test_the_jobs_block_follows_objects_the_manifests_and_the_chart_create():
    applied = _applied(JOBS)
    jobs = {d["metadata"]["name"]: d for d in applied if d["kind"] == "Job"}
    (release,) = {release for release, _ in _installs()}
    deployments = {d["metadata"]["name"]: d for d in by_kind(_render(release, {}), "Deployment")}
    named = 0
    for words in JOBS.commands():
        for w in words:
            kind, _, name = w.partition("/")
            if kind == "job" and name:
                assert name in jobs, f"README: {w}: no such Job in the files the block applies ({sorted(jobs)})"
                named += 1
            elif kind in ("deploy", "deployment") and name:
                assert name in deployments, f"README: {w}: the chart renders no such Deployment"
                named += 1
        for selector in _options(words, "-l", "--selector"):
            key, _, value = selector.partition("=")
            assert key == "batch.kubernetes.io/job-name" and value in jobs, selector
            named += 1
    assert named >= 3


def test_the_model_path_listed_is_where_the_job_writes_on_the_store_the_trainer_mounts():
    (release,) = {release for release, _ in _installs()}
    deployments = {d["metadata"]["name"]: d for d in by_kind(_render(release, {}), "Deployment")}
    jobs = {d["metadata"]["name"]: d for d in _applied(JOBS) if d["kind"] == "Job"}
    maps = {d["metadata"]["name"]: d for d in _applied(JOBS) if d["kind"] == "ConfigMap"}
    (words,) = [w for w in JOBS.commands() if "exec" in w]
    target, path = words[words.index("exec") + 1], words[-1]
    written = {}
    for name, job in jobs.items():
        for volume in job["spec"]["template"]["spec"]["volumes"]:
            spec = maps.get(volume.get("configMap", {}).get("name"), {}).get("data", {}).get("spec.json")
            if spec:
                written[name] = json.loads(spec)["output_dir"]
    assert path in written.values(), f"README lists {path}; the Jobs write {written}"
    job = jobs[next(n for n, p in written.items() if p == path)]
    deploy = deployments[target.partition("/")[2]]
    assert _claim_at(job, "/models") == _claim_at(deploy, "/models") is not None


def _claim_at(workload: dict, mount_path: str) -> str | None:
    pod = workload["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = [m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])
              if re.fullmatch(re.escape(mount_path) + "/?", m["mountPath"])]
    return next((claims[m] for m in mounts if m in claims), None)
