"""The shipped cluster definitions: they parse, and carry what our commands rely on.

The checks run through ``cluster.configs.validate_config`` (also behind ``echocmr cluster
validate``), and each check is shown to fire on a broken copy, so a passing run means something.
The RayJob entrypoint is parsed by the real ``echocmr train`` parser, and the `ray up` YAML is
validated against the JSON schema that ships inside Ray.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

import echocmr.cli as echocmr_cli
from echocmr.cluster import configs as cc


@pytest.fixture(scope="module")
def docs() -> dict[str, dict]:
    return {name: cc.load_config(name) for name in cc.CONFIG_FILES}


def test_every_shipped_config_is_valid(docs):
    for name, doc in docs.items():
        assert cc.kind_of(doc) == name
        assert cc.validate_config(doc) == [], name


def test_configs_are_package_data():
    folder = resources.files("echocmr.cluster") / "configs"
    assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".yaml")) == sorted(
        cc.CONFIG_FILES.values()
    )
    pyproject = (Path(echocmr_cli.__file__).parent.parent / "pyproject.toml").read_text()
    assert '"echocmr.cluster" = ["configs/*.yaml"]' in pyproject


def test_raycluster_gpu_workers_env_and_storage(docs):
    spec = docs["raycluster"]["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training worker on the head
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # Jobs API reachable
    (gpu_group,) = spec["workerGroupSpecs"]
    container = gpu_group["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"][cc.GPU_RESOURCE] == "1"
    assert container["resources"]["requests"][cc.GPU_RESOURCE] == "1"
    for group, pod in cc.pod_specs(spec):
        ray = cc.ray_container(pod)
        assert ray["image"] == cc.IMAGE_PLACEHOLDER, group
        (mlflow,) = [e for e in ray["env"] if e["name"] == cc.MLFLOW_ENV]
        assert mlflow["valueFrom"]["secretKeyRef"] == {"name": "echocmr-mlflow", "key": "tracking-uri"}
        assert cc.mount_paths(pod) == {cc.DATA_MOUNT: cc.DATA_VOLUME}, group
    assert spec["rayVersion"] == __import__("ray").__version__


def test_pvc_is_the_claim_the_pods_mount(docs):
    pvc = docs["pvc"]
    assert pvc["metadata"]["name"] == cc.DATA_VOLUME
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_runs_our_train_command_on_the_mounted_paths(docs):
    job = docs["rayjob"]
    argv = cc.entrypoint_argv(job)
    assert argv[:2] == ["echocmr", "train"]
    assert cc.flag_value(argv, "--shards") == "/data/shards"
    assert cc.flag_value(argv, "--storage") == "/data/checkpoints"
    assert "--gpu" in argv and cc.flag_value(argv, "--register")
    assert int(cc.flag_value(argv, "--workers")) <= cc.worker_gpus(job["spec"]["rayClusterSpec"])
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_rayjob_entrypoint_parses_with_the_real_train_parser(docs):
    parser = echocmr_cli.build_parser()
    argv = cc.entrypoint_argv(docs["rayjob"])
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as exc:  # argparse's way of rejecting an unknown flag
        pytest.fail(f"`echocmr train` rejects the RayJob entrypoint {argv}: exit {exc.code}")
    assert args.echocmr_command == "train"


def test_rayjob_and_raycluster_pods_stay_in_step(docs):
    """The RayJob embeds its own cluster spec; it must not drift from raycluster.yaml."""
    standing = dict(cc.pod_specs(docs["raycluster"]["spec"]))
    embedded = dict(cc.pod_specs(docs["rayjob"]["spec"]["rayClusterSpec"]))
    assert standing.keys() == embedded.keys()
    for group in standing:
        a, b = cc.ray_container(standing[group]), cc.ray_container(embedded[group])
        for key in ("image", "env", "resources", "volumeMounts"):
            assert a[key] == b[key], (group, key)
        assert standing[group]["volumes"] == embedded[group]["volumes"], group


def test_ray_up_matches_rays_own_schema(docs):
    jsonschema = pytest.importorskip("jsonschema")
    schema_file = resources.files("ray") / "autoscaler" / "ray-schema.json"
    jsonschema.validate(docs["ray-up"], json.loads(schema_file.read_text()))


def test_ray_up_installs_our_package_on_gpu_workers(docs):
    up = docs["ray-up"]
    types = up["available_node_types"]
    assert up["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["resources"]["GPU"] == 1
    assert up["file_mounts"]["~/echocmr"] == "."  # beside the Ray token and MLflow credentials
    assert "cd ~/echocmr && pip install -q -c constraints.txt ." in up["setup_commands"]
    assert any(cc.MLFLOW_ENV in c for c in up["setup_commands"])
    assert up["docker"]["image"].startswith("rayproject/ray:" + __import__("ray").__version__)
    assert "--volume /data:/data" in up["docker"]["run_options"]  # the shared mount, as on k8s
    assert any("mount" in c and " /data" in c for c in up["initialization_commands"])


def _broken(doc: dict, edit) -> list[str]:
    doc = copy.deepcopy(doc)
    edit(doc)
    return cc.validate_config(doc)


def test_validate_catches_what_would_break_our_commands(docs):
    def worker(doc):
        return doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]

    def no_gpu(doc):
        del worker(doc)["resources"]["limits"][cc.GPU_RESOURCE]

    def no_mlflow(doc):
        worker(doc)["env"] = []

    def moved_mount(doc):
        worker(doc)["volumeMounts"][0]["mountPath"] = "/mnt/data"

    assert any("nvidia.com/gpu" in p for p in _broken(docs["raycluster"], no_gpu))
    assert any(cc.MLFLOW_ENV in p for p in _broken(docs["raycluster"], no_mlflow))
    assert any("/data" in p for p in _broken(docs["raycluster"], moved_mount))

    def shards_elsewhere(doc):
        doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].replace("/data/shards", "/shards")

    def too_many_workers(doc):
        doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].replace("--workers 2", "--workers 9")

    def s3_shards(doc):
        doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].replace("/data/shards", "s3://b/s")

    def s3_storage(doc):
        doc["spec"]["entrypoint"] = doc["spec"]["entrypoint"].replace("/data/checkp", "s3://b/c")

    assert any("--shards /shards" in p for p in _broken(docs["rayjob"], shards_elsewhere))
    assert any("--workers 9" in p for p in _broken(docs["rayjob"], too_many_workers))
    assert _broken(docs["rayjob"], s3_shards) == []  # staged onto each node's disk
    assert _broken(docs["rayjob"], s3_storage) == []  # Ray Train writes to object stores itself

    def no_install(doc):
        doc["setup_commands"] = doc["setup_commands"][:1]

    def no_gpu_type(doc):
        doc["available_node_types"]["gpu_worker"]["resources"] = {}

    assert any("constraints.txt" in p for p in _broken(docs["ray-up"], no_install))
    assert any("GPU" in p for p in _broken(docs["ray-up"], no_gpu_type))
    assert any("--volume /data:/data" in p for p in _broken(
        docs["ray-up"], lambda d: d["docker"].update(run_options=[])))
    assert _broken(docs["pvc"], lambda d: d["spec"].update(accessModes=["ReadWriteOnce"]))


def test_cli_writes_configs_with_the_image_and_validates_them(tmp_path, capsys):
    out = tmp_path / "k8s"
    assert echocmr_cli.main(["cluster", "configs", "--out", str(out), "--image", "reg.io/e:1"]) == 0
    job = yaml.safe_load((out / "rayjob.yaml").read_text())
    images = {cc.ray_container(p)["image"] for _, p in cc.pod_specs(job["spec"]["rayClusterSpec"])}
    assert images == {"reg.io/e:1"}
    files = sorted(str(p) for p in out.iterdir())
    assert echocmr_cli.main(["cluster", "validate", *files]) == 0
    assert "4 file(s) OK" in capsys.readouterr().out

    text = (out / "raycluster.yaml").read_text().replace("mountPath: /data", "mountPath: /scratch")
    (out / "raycluster.yaml").write_text(text)
    assert echocmr_cli.main(["cluster", "validate", str(out / "raycluster.yaml")]) == 1
    assert "no PersistentVolumeClaim mounted at /data" in capsys.readouterr().out


def test_ray_token_auth_and_mlflow_credentials_are_on_in_every_config(docs):
    """Ray's control plane and the MLflow server take a credential in every shipped config;
    each check is shown to fire on a copy that drops it."""
    for spec in (docs["raycluster"]["spec"], docs["rayjob"]["spec"]["rayClusterSpec"]):
        assert spec["authOptions"] == {"mode": "token"}
        for _group, pod in cc.pod_specs(spec):
            env = {e["name"]: e for e in cc.ray_container(pod)["env"]}
            for name, key in (("MLFLOW_TRACKING_USERNAME", "username"),
                              ("MLFLOW_TRACKING_PASSWORD", "password")):
                assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "echocmr-mlflow",
                                                                  "key": key}
    up = docs["ray-up"]
    assert up["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert all("RAY_AUTH_MODE=token" in c for c in up[key] if "ray start" in c)
    assert any("RAY_AUTH_MODE=token" in c for c in up["setup_commands"])  # job drivers too

    def no_auth(doc):
        del doc["spec"]["authOptions"]

    def auth_off_on_purpose(doc):
        doc["spec"]["authOptions"] = {"mode": "disabled"}

    def no_mlflow_password(doc):
        env = cc.ray_container(doc["spec"]["headGroupSpec"]["template"]["spec"])["env"]
        env[:] = [e for e in env if e["name"] != "MLFLOW_TRACKING_PASSWORD"]

    def mlflow_token_instead(doc):
        no_mlflow_password(doc)
        cc.ray_container(doc["spec"]["headGroupSpec"]["template"]["spec"])["env"].append(
            {"name": "MLFLOW_TRACKING_TOKEN", "value": "t"})

    assert any("authOptions" in p for p in _broken(docs["raycluster"], no_auth))
    assert _broken(docs["raycluster"], auth_off_on_purpose) == []  # a written-down choice
    assert any("MLflow credentials" in p for p in _broken(docs["raycluster"], no_mlflow_password))
    assert _broken(docs["raycluster"], mlflow_token_instead) == []
    assert any("authOptions" in p for p in _broken(
        docs["rayjob"], lambda d: d["spec"]["rayClusterSpec"].pop("authOptions")))

    def plain_ray_start(doc):
        doc["worker_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "")
                                            for c in doc["worker_start_ray_commands"]]

    def no_token_file(doc):
        del doc["file_mounts"]["~/.ray/auth_token"]

    assert any("worker_start_ray_commands must start Ray with RAY_AUTH_MODE" in p
               for p in _broken(up, plain_ray_start))
    assert any("no node gets the token" in p for p in _broken(up, no_token_file))
