"""The deployment files are configs their tools accept, checked offline with the tools' own
schemas: cluster.yaml (and its commented AWS variant) for `ray up`, serve_config.yaml for
`serve deploy`, and deploy/kuberay-rayservice.yaml, whose serveConfigV2 must say what
serve_config.yaml says. (tests/integration/test_cluster.py runs Sesame on a real cluster.)"""

from pathlib import Path

import ray
import yaml
from ray import serve
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

import serve_app
from graph.settings import Settings

ROOT = Path(__file__).parents[2]
CLUSTER = (ROOT / "cluster.yaml").read_text()
SERVE_CONFIG = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
RAY_SERVICE = yaml.safe_load((ROOT / "deploy" / "kuberay-rayservice.yaml").read_text())


def _aws_variant() -> dict:
    """The commented block between `# BEGIN AWS` and `# END AWS`, with the shared commands."""
    block = CLUSTER.split("# BEGIN AWS\n", 1)[1].split("# END AWS", 1)[0]
    aws = yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.splitlines()))
    shared = yaml.safe_load(CLUSTER)
    return aws | {key: shared[key] for key in ("file_mounts", "rsync_exclude", "setup_commands",
                                               "head_start_ray_commands", "worker_start_ray_commands")}


def test_cluster_yaml_passes_the_ray_launcher_schema():
    config = yaml.safe_load(CLUSTER)
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "local"


def test_the_commented_aws_variant_passes_the_ray_launcher_schema():
    config = _aws_variant()
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "aws"
    assert config["available_node_types"]["worker"]["min_workers"] == config["max_workers"] == 2


def test_cluster_yaml_starts_sesame_on_the_head_once_every_machine_is_up():
    config = yaml.safe_load(CLUSTER)
    machines = 1 + len(config["provider"]["worker_ips"])
    [start] = [c for c in config["head_start_ray_commands"] if "scripts/serve" in c]
    assert "SESAME_RAY_ADDRESS=auto" in start and f"SESAME_WORKERS={2 * machines}" in start
    assert f"--wait-for-nodes {machines}" in start
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:  # keys, settings and the token reach every Ray worker
            assert ". ~/sesame.env" in command and "RAY_AUTH_MODE=token" in command
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_serve_config_passes_the_serve_schema_and_names_this_app():
    config = ServeDeploySchema.model_validate(SERVE_CONFIG)
    [app] = config.applications
    module, attribute = app.import_path.split(":")
    assert module == "serve_app" and callable(getattr(serve_app, attribute))
    assert set(app.args) <= set(Settings.model_fields)  # Settings ignores unknown names: a typo would pass
    assert Settings(**app.args).workers == app.args["workers"]  # and the values are valid
    assert isinstance(serve_app.app_builder(app.args), serve.Application)
    [deployment] = app.deployments
    assert deployment.name == serve_app.SesameIngress.name
    assert deployment.ray_actor_options.resources == {serve_app.HEAD_NODE: 0.001}


def test_the_kuberay_service_deploys_what_serve_config_yaml_says():
    assert RAY_SERVICE["apiVersion"] == "ray.io/v1" and RAY_SERVICE["kind"] == "RayService"
    served = yaml.safe_load(RAY_SERVICE["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(served)
    assert served["applications"] == SERVE_CONFIG["applications"]
    assert served["proxy_location"] == SERVE_CONFIG["proxy_location"]
    cluster = RAY_SERVICE["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:  # the secrets reach every Ray container, as environment variables
        [container] = group["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "sesame-secrets"}}]
    machines = 1 + sum(group["replicas"] for group in cluster["workerGroupSpecs"])
    assert served["applications"][0]["args"]["workers"] == 2 * machines
