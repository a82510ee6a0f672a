"""deploy/k8s checked without a cluster: every manifest against the Kubernetes schemas
(kubernetes-validate's own copies, offline, Kubernetes 1.30, strict: unknown fields are
errors), the Helm values against a schema of the chart's values, the dispatcher's Dagster
instance through Dagster's own schema and PostgreSQL storage, and the pieces that must
agree with each other (names, images, secrets, settings)."""
from __future__ import annotations

import copy
import shutil
import uuid

import jsonschema
import kubernetes_validate
import psycopg
import pytest
import yaml

from lead_orchestrator.settings import Settings
from tests.k8s_support import (
    K8S_DIR, KUBERNETES_VERSION, ROOT, SECRETS, config_map, dockerfile_stages, helm_values, kustomization,
    manifests, pod_spec, resource, schema_registry, user_deployment, workloads,
)

SECRET_SETTINGS = {"DATABASE_URL", "LEAD_ENCRYPTION_KEY", "APP_SECRET_KEY", "METRICS_TOKEN"}
# Variables read by Dagster rather than by Settings: its home, and its storage in dagster.yaml.
DAGSTER_VARIABLES = {"DAGSTER_HOME", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_DB",
                     "DAGSTER_PG_PASSWORD"}


def image_user() -> int:
    [user] = [args for keyword, args in dockerfile_stages()[-1] if keyword == "USER"]
    return int(user.split(":")[0])


# --- every manifest is a valid Kubernetes object ---------------------------------------

def test_every_manifest_validates_against_the_kubernetes_schemas():
    found = manifests()
    assert {doc["kind"] for _, doc in found} >= {"Deployment", "Service", "HorizontalPodAutoscaler",
                                                  "PodDisruptionBudget", "ConfigMap", "Job", "Ingress"}
    for path, doc in found:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")

    # The check means something: a misspelt field and a wrong type are refused.
    receiver = copy.deepcopy(resource("Deployment", "lead-receiver"))
    pod_spec(receiver)["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/readyz", "port": "http"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(receiver, KUBERNETES_VERSION, strict=True)
    receiver = copy.deepcopy(resource("Deployment", "lead-receiver"))
    pod_spec(receiver)["securityContext"]["runAsNonRoot"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(receiver, KUBERNETES_VERSION, strict=True)


def test_kustomizations_list_every_manifest_and_one_image():
    main, migrate = kustomization(), kustomization(K8S_DIR / "migrate")
    listed = {K8S_DIR / name for name in main["resources"]} | {K8S_DIR / "migrate" / n for n in migrate["resources"]}
    assert listed == {path for path, _ in manifests()}
    assert main["namespace"] == migrate["namespace"] == helm_values()["runLauncher"]["config"]["k8sRunLauncher"][
        "jobNamespace"]
    assert [g["files"] for g in main["configMapGenerator"]] == [["dagster.yaml"]]
    assert (K8S_DIR / "dagster.yaml").is_file()
    # One image, named the same way everywhere it is set.
    assert main["images"] == migrate["images"]
    [image] = main["images"]
    for workload in workloads():
        assert {c["image"] for c in pod_spec(workload)["containers"]} == {image["name"]}
    chart_image = user_deployment()["image"]
    assert (chart_image["repository"], chart_image["tag"]) == (image["newName"], image["newTag"])


# --- secrets: referenced, never stored --------------------------------------------------

def env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def secret_refs(container: dict) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def test_secrets_are_referenced_never_stored():
    assert not [doc for _, doc in manifests() if doc["kind"] == "Secret"]
    for workload in workloads():
        for container in pod_spec(workload)["containers"]:
            assert not [e for e in container.get("env", []) if e["name"] in SECRET_SETTINGS | {"DAGSTER_PG_PASSWORD"}
                        and "value" in e], "a secret's value in a manifest"
            assert {name for name, _ in secret_refs(container).values()} <= SECRETS
    [receiver] = pod_spec(resource("Deployment", "lead-receiver"))["containers"]
    assert secret_refs(receiver) == {key: ("lead-orchestrator-secrets", key) for key in SECRET_SETTINGS}
    [dispatcher] = pod_spec(resource("Deployment", "lead-dispatcher"))["containers"]
    assert secret_refs(dispatcher)["DAGSTER_PG_PASSWORD"] == (helm_values()["global"]["postgresqlSecretName"],
                                                              "postgresql-password")
    [migrate] = pod_spec(resource("Job", "lead-migrate"))["containers"]
    # The migration logs in as the schema's owner, from a Secret no long-running pod reads.
    assert secret_refs(migrate)["DATABASE_URL"] == ("lead-orchestrator-migrate", "DATABASE_URL")
    assert not SECRET_SETTINGS & set(config_map())


def test_every_setting_named_is_one_the_code_reads():
    known = {field.alias for field in Settings.model_fields.values()} | DAGSTER_VARIABLES
    assert set(config_map()) <= known
    for workload in workloads():
        for container in pod_spec(workload)["containers"]:
            assert env_names(container) <= known
            assert [ref["configMapRef"]["name"] for ref in container["envFrom"]] == ["lead-orchestrator-config"]
    # The Dagster code location reads these with EnvVar, without defaults.
    assert {"SHOPMONKEY_BASE_URL", "TWILIO_API_BASE_URL", "SENDGRID_API_BASE_URL", "PUBLIC_BASE_URL"} <= set(config_map())


# --- pods: unprivileged, bounded, probed ------------------------------------------------

def test_every_pod_runs_unprivileged_with_requests_and_limits():
    for workload in workloads():
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == image_user()
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            # The only writable place: an emptyDir at /tmp (LEAD_DATA_DIR lives there).
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]
            assert config_map()["LEAD_DATA_DIR"].startswith("/tmp/")
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind])


def test_receiver_is_probed_served_and_scaled():
    deployment = resource("Deployment", "lead-receiver")
    [container] = pod_spec(deployment)["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert [p["containerPort"] for p in container["ports"] if p["name"] == "http"] == [8000]
    assert container["command"][container["command"].index("--port") + 1] == "8000"
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    service = resource("Service", "lead-receiver")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    hpa = resource("HorizontalPodAutoscaler", "lead-receiver")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lead-receiver"}
    assert hpa["spec"]["minReplicas"] >= 2
    # The autoscaler owns the replica count: a `replicas` here would reset it at every apply.
    assert "replicas" not in deployment["spec"]
    # A CPU target needs a CPU request to be measured against.
    assert container["resources"]["requests"]["cpu"]

    ingress = resource("Ingress", "lead-receiver")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert {p["path"] for p in paths} == {"/webhooks/", "/unsubscribe/", "/healthz"}
    assert {(p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"]) for p in paths} == {
        ("lead-receiver", "http")}


def test_dispatchers_run_several_and_every_budget_covers_one_workload():
    dispatcher = resource("Deployment", "lead-dispatcher")
    assert dispatcher["spec"]["replicas"] >= 2
    [container] = pod_spec(dispatcher)["containers"]
    assert container["command"] == ["lead-orchestrator", "dispatcher"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    [instance] = [v for v in pod_spec(dispatcher)["volumes"] if "configMap" in v]
    assert instance["configMap"]["name"] == kustomization()["configMapGenerator"][0]["name"]
    home = [e["value"] for e in container["env"] if e["name"] == "DAGSTER_HOME"]
    assert home == [mounts[instance["name"]]["mountPath"]]

    budgets = [doc for _, doc in manifests() if doc["kind"] == "PodDisruptionBudget"]
    deployments = [doc for _, doc in manifests() if doc["kind"] == "Deployment"]
    assert len(budgets) == len(deployments)
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"].items()
        covered = [d["metadata"]["name"] for d in deployments
                   if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert covered == [budget["metadata"]["name"]]


def test_migration_job_runs_once_and_cleans_up():
    job = resource("Job", "lead-migrate")
    [container] = pod_spec(job)["containers"]
    assert container["command"] == ["lead-orchestrator", "migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0 and job["spec"]["activeDeadlineSeconds"] > 0
    # Migrating may encrypt shop secrets still in plain text: it needs the key.
    assert "LEAD_ENCRYPTION_KEY" in secret_refs(container)


# --- the Helm values ----------------------------------------------------------------------

def values_validator() -> jsonschema.Validator:
    schema = yaml.safe_load((ROOT / "tests" / "dagster_chart_values_schema.yaml").read_text())
    return jsonschema.Draft202012Validator(schema, registry=schema_registry())


def test_helm_values_match_the_charts_values_schema():
    validator = values_validator()
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(helm_values())]
    assert errors == []

    # The check means something: a misspelt key, a second way to start the code server,
    # and a wrong Kubernetes type inside a chart value are each refused.
    for change in (lambda v: v["dagsterDaemon"]["runMonitoring"].update(enabeld=True),
                   lambda v: v["dagster-user-deployments"]["deployments"][0].update(dagsterApiGrpcArgs=["-m", "x"]),
                   lambda v: v["dagster-user-deployments"]["deployments"][0].update(replicaCount=2),
                   lambda v: v["runLauncher"]["config"]["k8sRunLauncher"]["securityContext"].update(runAsUser="x"),
                   lambda v: v["dagsterWebserver"]["resources"]["limits"].update(cpu=[1])):
        values = copy.deepcopy(helm_values())
        change(values)
        assert list(validator.iter_errors(values)), change


def test_helm_values_use_dagsters_engine_and_this_deployments_names():
    values = helm_values()
    postgres, config = values["postgresql"], config_map()
    # External PostgreSQL, its password from a Secret the operator creates.
    assert postgres["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in postgres
    assert (postgres["postgresqlHost"], str(postgres["service"]["port"]), postgres["postgresqlUsername"],
            postgres["postgresqlDatabase"]) == (config["DAGSTER_PG_HOST"], config["DAGSTER_PG_PORT"],
                                                config["DAGSTER_PG_USER"], config["DAGSTER_PG_DB"])
    assert postgres["postgresqlScheme"] == "postgresql+psycopg2"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["runMonitoring"]["enabled"] and daemon["runRetries"]["enabled"]
    assert daemon["runRetries"]["maxRetries"] >= 1
    deployment = user_deployment()
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert deployment["podSecurityContext"]["runAsUser"] == image_user()
    # Read-only but for emptyDirs at /tmp and Dagster's home (what it writes, measured in
    # tests/test_container_image.py).
    assert deployment["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in deployment["volumes"]}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in deployment["volumeMounts"]}
    assert all("emptyDir" in mounted[path] for path in ("/tmp", values["global"].get("dagsterHome",
                                                                                      "/opt/dagster/dagster_home")))
    for sources in (deployment, values["runLauncher"]["config"]["k8sRunLauncher"]):
        assert [s["name"] for s in sources["envConfigMaps"]] == ["lead-orchestrator-config"]
        assert [s["name"] for s in sources["envSecrets"]] == ["lead-orchestrator-secrets"]


def test_run_queue_limits_name_a_sensor_and_a_schedule_that_exist():
    from orchestrator_dagster.definitions import defs

    limits = helm_values()["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    by_key = {limit["key"]: limit["value"] for limit in limits}
    sensors, schedules = {s.name: s for s in defs.sensors}, {s.name: s for s in defs.schedules}
    assert sensors[by_key["dagster/sensor_name"]].job_name == "ingest_job"
    assert schedules[by_key["dagster/schedule_name"]].job_name == "touchpoints_job"


# --- deploy/k8s/dagster.yaml: the same instance as the chart's ---------------------------

def instance_file() -> dict:
    return yaml.safe_load((K8S_DIR / "dagster.yaml").read_text())


def test_dagster_yaml_passes_dagsters_schema_and_the_run_launchers(tmp_path):
    from dagster._config import process_config
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    shutil.copyfile(K8S_DIR / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    # Dagster checks a launcher's own config only when it builds it, which needs a cluster:
    # check it against dagster-k8s' schema here.
    launcher = config["run_launcher"]["config"]
    assert process_config(K8sRunLauncher.config_type(), launcher).success
    typo = {**launcher, "job_namespce": "x"}
    assert not process_config(K8sRunLauncher.config_type(), typo).success

    (tmp_path / "dagster.yaml").write_text((K8S_DIR / "dagster.yaml").read_text()
                                           + "\nrun_retries_typo:\n  enabled: true\n")
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def expected_from_values(values: dict, namespace: str) -> dict:
    """What the chart writes into its instance's dagster.yaml from these values, for the
    settings deploy/k8s/dagster.yaml repeats (after the chart's templates, 1.13.x)."""
    daemon, launcher = values["dagsterDaemon"], values["runLauncher"]["config"]["k8sRunLauncher"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    monitoring, retries = daemon["runMonitoring"], daemon["runRetries"]
    run_k8s = launcher["runK8sConfig"]
    return {
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator", "config": {
            "max_concurrent_runs": queued["maxConcurrentRuns"],
            "tag_concurrency_limits": queued["tagConcurrencyLimits"],
            "dequeue_interval_seconds": queued["dequeueIntervalSeconds"],
            "dequeue_use_threads": queued["dequeueUseThreads"],
            "dequeue_num_workers": queued["dequeueNumWorkers"]}},
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
            "load_incluster_config": launcher["loadInclusterConfig"],
            "job_namespace": launcher["jobNamespace"] or namespace,
            "image_pull_policy": launcher["imagePullPolicy"],
            # The chart's service account and instance ConfigMap are named after the release.
            "service_account_name": "dagster",
            "dagster_home": values.get("global", {}).get("dagsterHome", "/opt/dagster/dagster_home"),
            "instance_config_map": "dagster-instance",
            "postgres_password_secret": values["global"]["postgresqlSecretName"],
            "env_config_maps": [s["name"] for s in launcher["envConfigMaps"]],
            "env_secrets": [s["name"] for s in launcher["envSecrets"]],
            "resources": launcher["resources"],
            "security_context": launcher["securityContext"],
            "run_k8s_config": {"job_spec_config": run_k8s["jobSpecConfig"]}}},
        "run_monitoring": {
            "enabled": monitoring["enabled"], "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
            "max_runtime_seconds": monitoring["maxRuntimeSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"]},
        "run_retries": {"enabled": retries["enabled"], "max_retries": retries["maxRetries"],
                        "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"]},
        "sensors": {"use_threads": daemon["sensors"]["useThreads"], "num_workers": daemon["sensors"]["numWorkers"]},
        "schedules": {"use_threads": daemon["schedules"]["useThreads"],
                      "num_workers": daemon["schedules"]["numWorkers"]},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager",
                         "class": "NoOpComputeLogManager"},
        "scheduler": {"module": "dagster._core.scheduler", "class": "DagsterDaemonScheduler"},
    }


def test_dagster_yaml_is_the_instance_the_chart_writes_from_the_values():
    mine = instance_file()
    expected = expected_from_values(helm_values(), kustomization()["namespace"])
    assert {key: mine[key] for key in expected} == expected
    assert set(mine) == set(expected) | {"storage"}
    # Storage: the chart's database, user and scheme, read from the ConfigMap's variables.
    database = mine["storage"]["postgres"]["postgres_db"]
    assert {key: database[key] for key in ("hostname", "port", "username", "db_name", "password")} == {
        "hostname": {"env": "DAGSTER_PG_HOST"}, "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"}, "db_name": {"env": "DAGSTER_PG_DB"},
        "password": {"env": "DAGSTER_PG_PASSWORD"}}
    assert database["scheme"] == helm_values()["postgresql"]["postgresqlScheme"]


@pytest.fixture
def dagster_database(pg):
    """An empty database of its own for Dagster's storage, and the variables that point
    deploy/k8s/dagster.yaml at it. The test cluster listens on a Unix socket only: the
    host is left empty and libpq finds the socket through PGHOST."""
    if pg[0] is None:
        pytest.skip("needs the embedded cluster to create a database (TEST_DATABASE_URL is set)")
    name = f"dagster_k8s_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg[0].url("postgres"), autocommit=True) as su:
        su.execute(f'CREATE DATABASE "{name}"')
    yield {"DAGSTER_PG_HOST": "", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USER": "postgres",
           "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": name, "PGHOST": pg[0].socket_dir}
    with psycopg.connect(pg[0].url("postgres"), autocommit=True) as su:
        su.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_dagster_yaml_opens_dagsters_storage_in_postgresql(dagster_database, tmp_path, monkeypatch):
    from dagster import AssetKey, AssetMaterialization, DagsterInstance

    for key, value in dagster_database.items():
        monkeypatch.setenv(key, value)
    shutil.copyfile(K8S_DIR / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        # What the dispatcher does with it: a runless `leads` materialization.
        instance.report_runless_asset_event(AssetMaterialization(AssetKey("leads"), partition="k8s-shop"))
        assert instance.get_latest_materialization_event(AssetKey("leads")) is not None
        coordinator = instance.run_coordinator
        assert type(coordinator).__name__ == "QueuedRunCoordinator"
        assert coordinator.get_run_queue_config().max_concurrent_runs == 8
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert instance.run_retries_max_retries == 2

    # Why the scheme is named: the chart's default (`postgresql`) means psycopg 3 to
    # SQLAlchemy 2.1, and dagster-postgres' NOTIFY then fails on the first event.
    (tmp_path / "dagster.yaml").write_text((K8S_DIR / "dagster.yaml").read_text().replace(
        "scheme: postgresql+psycopg2", "scheme: postgresql"))
    with DagsterInstance.from_config(str(tmp_path)) as instance, pytest.raises(Exception, match="NOTIFY"):
        instance.report_runless_asset_event(AssetMaterialization(AssetKey("leads"), partition="k8s-shop"))
