"""Reading deploy/: the Kubernetes manifests, the Dagster Helm values, the Dockerfile, and
the Kubernetes schemas that kubernetes-validate ships (offline, pinned version)."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_DIR = DEPLOY / "k8s"
# The Kubernetes version the manifests are written for and validated against.
KUBERNETES_VERSION = "1.30"
NOT_MANIFESTS = {"kustomization.yaml", "dagster.yaml", "dagster-values.yaml"}
WORKLOADS = {"Deployment", "Job"}
# Secrets the operator creates (docs/kubernetes.md); nothing here holds their values.
SECRETS = {"lead-orchestrator-secrets", "lead-orchestrator-migrate", "dagster-postgresql-secret"}


def manifests() -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        if path.name not in NOT_MANIFESTS:
            found += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def resource(kind: str, name: str) -> dict:
    matches = [doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def workloads() -> list[dict]:
    return [doc for _, doc in manifests() if doc["kind"] in WORKLOADS]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def kustomization(folder: Path = K8S_DIR) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def helm_values() -> dict:
    return yaml.safe_load((K8S_DIR / "dagster-values.yaml").read_text())


def user_deployment() -> dict:
    [deployment] = helm_values()["dagster-user-deployments"]["deployments"]
    return deployment


def code_server_command(host: str = "0.0.0.0") -> list[str]:
    """The code server's command line as the chart's user-deployment template writes it
    for `codeServerArgs`: `dagster code-server start -h <host> -p <port>` + the args."""
    deployment = user_deployment()
    return ["dagster", "code-server", "start", "-h", host, "-p", str(deployment["port"]),
            *deployment["codeServerArgs"]]


def config_map() -> dict[str, str]:
    return resource("ConfigMap", "lead-orchestrator-config")["data"]


@cache
def kubernetes_definitions() -> dict:
    """Every Kubernetes object's schema for KUBERNETES_VERSION, from kubernetes-validate's
    package data (its `$id` is https://kubernetes.io/api/_definitions.json)."""
    import importlib.resources

    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return json.loads((folder / f"v{KUBERNETES_VERSION}.0-local" / "_definitions.json").read_text())


def schema_registry():
    from referencing import Registry, Resource

    definitions = Resource.from_contents(kubernetes_definitions())
    return Registry().with_resource(kubernetes_definitions()["$id"], definitions)


def dockerfile_instructions(path: Path = DEPLOY / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def env_assignments(args: str) -> dict[str, str]:
    """`ENV A=1 B=2` (the key=value form this Dockerfile uses)."""
    pairs = [token.split("=", 1) for token in args.split()]
    assert all(len(pair) == 2 for pair in pairs), f"ENV not in key=value form: {args}"
    return dict(pairs)
