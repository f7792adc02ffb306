"""cluster.yaml is a config `ray up` accepts (checked with Ray's own schema, offline)."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config


def test_cluster_yaml_passes_the_ray_launcher_schema():
    config = yaml.safe_load((Path(__file__).parents[2] / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "local"
