"""cluster.yaml, checked offline the way `ray up` checks it before launching the head node.

`ray up` (ray.autoscaler._private.commands.create_or_update_cluster → _bootstrap_config) does, in
order: prepare_config (merge aws/defaults.yaml, merge setup commands, docker checks, per-type
min/max workers) → AWSNodeProvider.fillout_available_node_types_resources (EC2
DescribeInstanceTypes) → validate_config (the wheel's ray-schema.json plus Ray's own checks) →
bootstrap_aws (IAM role and instance profile, key pair, subnets, security groups, AMI check). The
tests run the same functions from the installed wheel; the AWS calls go to moto's in-process
EC2/IAM mock, whose instance-type data is a snapshot of the real EC2 catalogue. What this cannot
cover (instance launch, AMIs, quotas, spot capacity, the setup commands themselves) is listed in
docs/cluster.md.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
import types
from importlib.metadata import version
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
TORCH_PIN = "torch==2.13.0"
PROJECT_INSTALL = (
    'pip install -q -c ~/fashion-batch/constraints.txt -e "$HOME/fashion-batch[cluster]"'
)


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def prepared(config: dict) -> dict:
    """What `ray up` holds after its offline steps: defaults merged, then validated.

    The file is validated as written first: Ray's own order (merge, then validate) crashes with a
    bare TypeError in merge_setup_commands on a mistyped setup_commands, before its schema check
    could name the key."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(copy.deepcopy(config))
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def effective_setup_commands(config: dict, node_type: str) -> list[str]:
    """The commands Ray runs on a node of this type (config already through prepare_config).

    The head runs setup_commands + head_setup_commands. A worker runs its type's own
    worker_setup_commands if the type has any (then WITHOUT setup_commands: Ray does not merge
    those), else setup_commands + worker_setup_commands (merged by prepare_config)."""
    if node_type == config["head_node_type"]:
        return config["head_setup_commands"]
    own = config["available_node_types"][node_type].get("worker_setup_commands")
    return own if own is not None else config["worker_setup_commands"]


# ----------------------------------------------------------------------------- schema and checks


def test_raw_file_matches_wheel_schema(raw):
    """The file as written is valid against ray-schema.json (no default has to rescue it)."""
    from ray.autoscaler._private.util import validate_config

    validate_config(raw)


def test_valid_after_ray_fillout_defaults(raw):
    config = prepared(raw)
    assert config["provider"] == raw["provider"]
    assert set(config["available_node_types"]) == set(raw["available_node_types"])
    # The defaults file's nightly-wheel install and its pip upgrades must not leak in.
    for node_type in config["available_node_types"]:
        commands = "\n".join(effective_setup_commands(config, node_type))
        assert "ray-wheels" not in commands and "pip install -U" not in commands, node_type
        assert "tensorflow" not in commands, node_type


def _set(path: str, value):
    def mutate(config: dict) -> None:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value

    return mutate


def _rename(path: str, new_leaf: str):
    def mutate(config: dict) -> None:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[new_leaf] = node.pop(leaf)

    return mutate


BROKEN = {  # mistake: (mutation, what the error must say)
    "typo top-level key max_worker": (
        _rename("max_workers", "max_worker"),
        "'max_worker' was unexpected",
    ),
    "typo top-level key idle_timeout_minute": (
        _rename("idle_timeout_minutes", "idle_timeout_minute"),
        "'idle_timeout_minute' was unexpected",
    ),
    "typo node-type key min_worker": (
        _rename("available_node_types.gpu_g6.min_workers", "min_worker"),
        "'min_worker' was unexpected",
    ),
    "typo node-type key resource": (
        _rename("available_node_types.gpu_g5.resources", "resource"),
        "'resources' is a required property",
    ),
    "wrong type max_workers": (_set("max_workers", "ten"), "'ten' is not of type 'integer'"),
    "wrong type GPU count": (
        _set("available_node_types.gpu_g6.resources", {"CPU": 4, "GPU": "1"}),
        "'1' is not of type 'integer'",
    ),
    "wrong type setup_commands": (
        _set("setup_commands", "pip install ."),
        "is not of type 'array'",
    ),
    "head type not defined": (
        _set("head_node_type", "head_gpu"),
        "`head_node_type` must be one of `available_node_types`",
    ),
    "min_workers over max_workers": (
        _set("available_node_types.gpu_g6.min_workers", 11),
        "max_workers` is smaller than the sum of `min_workers`",
    ),
}


@pytest.mark.parametrize(("mutate", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_validation_bites(raw, mutate, message):
    """Each of these mistakes must stop `ray up` before it touches AWS, naming the problem."""
    mutate(raw)
    with pytest.raises((jsonschema.ValidationError, ValueError)) as err:
        prepared(raw)
    assert message in str(err.value)


def test_undefined_node_type_is_reported_by_name(raw):
    raw["head_node_type"] = "head_gpu"
    with pytest.raises(ValueError, match="head_node_type"):
        prepared(raw)


def test_node_configs_match_ec2_run_instances(raw):
    """node_config is free-form in Ray's schema and goes to EC2 RunInstances as is: check it
    against botocore's RunInstances input shape, so a typo fails here and not at launch."""
    bad = _node_config_errors(raw)
    assert not bad, bad


def test_node_config_check_bites(raw):
    nc = raw["available_node_types"]["gpu_g6"]["node_config"]
    nc["InstanceTyp"] = nc.pop("InstanceType")
    raw["available_node_types"]["gpu_g5"]["node_config"]["BlockDeviceMappings"][0]["Ebs"][
        "VolumeSize"
    ] = "150"
    errors = _node_config_errors(raw)
    assert set(errors) == {"gpu_g6", "gpu_g5"}
    assert "InstanceTyp" in errors["gpu_g6"] and "VolumeSize" in errors["gpu_g5"]


def _node_config_errors(config: dict) -> dict[str, str]:
    import botocore.session
    from botocore.validate import ParamValidator

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances")
    errors = {}
    for name, node_type in config["available_node_types"].items():
        params = {"MinCount": 1, "MaxCount": 1, **node_type["node_config"]}
        report = ParamValidator().validate(params, shape.input_shape)
        if report.has_errors():
            errors[name] = report.generate_report()
    return errors


# ----------------------------------------------------------------------------- our invariants


def test_head_schedules_nothing(raw):
    config = prepared(raw)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert "GPU" not in head["resources"]
    assert head["max_workers"] == 0


def test_every_node_installs_pinned_torch_then_project_from_constraints(raw):
    config = prepared(raw)
    for node_type in config["available_node_types"]:
        commands = effective_setup_commands(config, node_type)
        torch_at = [
            i for i, c in enumerate(commands) if re.search(rf"pip install .*{TORCH_PIN}", c)
        ]
        project_at = [i for i, c in enumerate(commands) if PROJECT_INSTALL in c]
        assert torch_at and project_at, (node_type, commands)
        assert max(torch_at) < min(project_at), f"{node_type}: torch must be installed first"
        # The venv that every Ray command uses is created before anything is installed into it.
        assert any("python3.11 -m venv ~/venv" in c for c in commands[: min(torch_at)])


def test_worker_torch_is_the_cuda_build_and_head_the_cpu_build(raw):
    config = prepared(raw)
    for node_type, spec in config["available_node_types"].items():
        torch_cmd = next(c for c in effective_setup_commands(config, node_type) if TORCH_PIN in c)
        if spec["resources"].get("GPU"):
            # PyPI's Linux x86_64 wheel is the CUDA build; the CPU index must not be used.
            assert "whl/cpu" not in torch_cmd, node_type
        else:
            assert "download.pytorch.org/whl/cpu" in torch_cmd, node_type


def test_file_mounts_carry_what_the_install_needs(raw):
    """Ray skips a missing local file_mounts source with only a log line; the install would then
    fail on the node. Sources are relative to the repo root, where `ray up` is run."""
    mounts = raw["file_mounts"]
    needed = {"pyproject.toml", "constraints.txt", "README.md", "fashion_batch", "jobs"}
    remote = {Path(r).relative_to("~/fashion-batch").as_posix(): src for r, src in mounts.items()}
    assert needed <= set(remote), needed - set(remote)
    for rel, local in remote.items():
        assert (ROOT / local).exists(), local
        assert local.removeprefix("./") == rel, (rel, local)
    # The whole tree is never mounted: that would hash and rsync .venv on every `ray up`.
    assert all((ROOT / local).resolve() != ROOT for local in mounts.values())


def test_cluster_extra_brings_jobs_api_and_ec2_client(raw):
    """cluster.yaml replaces Ray's default head_setup_commands, which pip-install boto3: the
    autoscaler on the head needs it to launch workers, and the Jobs API needs ray[default].
    Both come from the [cluster] extra that every node installs."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {re.split(r"[<>=!~; ]", req, maxsplit=1)[0] for req in extras["cluster"]}
    assert {"ray[default]", "boto3"} <= names
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^boto3==", pins, re.M) and re.search(r"^aiohttp-cors==", pins, re.M)
    config = prepared(raw)
    for node_type in config["available_node_types"]:
        assert any(
            '"$HOME/fashion-batch[cluster]"' in c
            for c in effective_setup_commands(config, node_type)
        ), node_type


def test_model_dir_reaches_every_worker(raw):
    """Workers get the head's model dir at launch; it must not hide inside a file mount (the
    laptop's copy would overwrite what `train` wrote on the head)."""
    synced = raw["cluster_synced_files"]
    assert synced == ["/home/ubuntu/fashion-batch-models"]
    assert raw["auth"]["ssh_user"] == "ubuntu"  # the paths above are that user's home
    mounts = [Path(r.replace("~", "/home/ubuntu", 1)) for r in raw["file_mounts"]]
    assert not any(Path(synced[0]) in (m, *m.parents) for m in mounts)
    assert raw["file_mounts_sync_continuously"] is False


def test_cluster_runs_the_ray_and_python_the_client_runs(raw):
    """Ray refuses to connect a client to a cluster with another Ray or Python minor version."""
    pins = dict(
        line.strip().split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    assert pins["ray"] == version("ray")
    client_python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert f"{client_python} -m venv ~/venv" in "\n".join(raw["setup_commands"])


# ----------------------------------------------------------------------------- AWS steps (moto)


@pytest.fixture(scope="module")
def aws_mock(tmp_path_factory):
    """moto's in-process AWS for this module: fake credentials, HOME in a temp dir (bootstrap
    writes the SSH key to ~/.ssh), Ray's 15 s IAM propagation sleeps skipped. Yields the EC2
    instance-type catalogue, listed once through Ray's own `list_ec2_instances` (slow under moto:
    ~20 s on 2 busy cores)."""
    moto = pytest.importorskip("moto")
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.aws import node_provider
    from ray.autoscaler._private.aws import utils as aws_utils

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-west-2",
            "HOME": str(home),
            # Ray attaches the AWS-managed AmazonEC2FullAccess/AmazonS3FullAccess to its role.
            "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
        }.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_EC2"):
            mp.delenv(k, raising=False)
        mp.setattr(aws_config, "time", types.SimpleNamespace(sleep=lambda s: None))
        # Ray caches boto3 clients/resources per region: drop any made outside this mock.
        caches = (aws_utils.client_cache, aws_utils.resource_cache)
        for fn in caches:
            fn.cache_clear()
        with moto.mock_aws():
            catalogue = node_provider.list_ec2_instances("us-west-2")
            mp.setattr(node_provider, "list_ec2_instances", lambda *a, **k: catalogue)
            yield types.SimpleNamespace(home=home, instance_types=catalogue)
        for fn in caches:
            fn.cache_clear()


def test_declared_resources_match_ec2_instance_types(raw, aws_mock):
    """Ray's own autodetection from DescribeInstanceTypes: every instance type exists, and each
    GPU type declares exactly the GPUs the hardware has (a type that under-declares would idle
    GPUs; over-declaring would schedule actors onto GPUs that do not exist)."""
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(copy.deepcopy(raw))
    filled = AWSNodeProvider.fillout_available_node_types_resources(config)
    for name, spec in filled["available_node_types"].items():
        declared = raw["available_node_types"][name]["resources"]
        detected = {k: v for k, v in spec["resources"].items() if k not in declared}
        if name == raw["head_node_type"]:
            assert spec["resources"]["CPU"] == 0 and "GPU" not in spec["resources"]
            continue
        # Nothing we declared contradicts the hardware...
        hardware = _ec2_hardware(aws_mock.instance_types, spec["node_config"]["InstanceType"])
        assert declared["GPU"] == hardware["GPU"] >= 1, name
        assert declared["CPU"] == hardware["CPU"], name
        # ... and Ray added what we left to it (memory, the accelerator type).
        assert detected["memory"] > 0, name
        assert any(k.startswith("accelerator_type:") for k in detected), name


def test_unknown_instance_type_fails_resource_fillout(raw, aws_mock):
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.util import prepare_config

    raw["available_node_types"]["gpu_g6"]["node_config"]["InstanceType"] = "g6.xlargee"
    with pytest.raises(ValueError, match="g6.xlargee"):
        AWSNodeProvider.fillout_available_node_types_resources(prepare_config(raw))


def test_instance_types_offered_in_every_listed_zone(raw, aws_mock):
    import boto3

    ec2 = boto3.client("ec2", region_name=raw["provider"]["region"])
    zones = raw["provider"]["availability_zone"].split(",")
    for name, spec in raw["available_node_types"].items():
        itype = spec["node_config"]["InstanceType"]
        offered = {
            o["Location"]
            for o in ec2.describe_instance_type_offerings(
                LocationType="availability-zone",
                Filters=[{"Name": "instance-type", "Values": [itype]}],
            )["InstanceTypeOfferings"]
        }
        assert set(zones) <= offered, (name, itype, set(zones) - offered)


def test_ray_up_bootstrap_against_mocked_aws(raw, aws_mock, caplog):
    """Everything `ray up` does before RunInstances, against moto: the returned config is what
    the launcher would hand to EC2 for the head node."""
    from ray.autoscaler._private.commands import _bootstrap_config

    caplog.set_level(logging.WARNING)
    resolved = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)

    assert "Failed to autodetect node resources" not in caplog.text
    # The head gets the instance profile Ray created; workers name the same profile themselves.
    assert (
        "instance-profile/ray-autoscaler-v1" in resolved["head_node"]["IamInstanceProfile"]["Arn"]
    )
    key = Path(resolved["auth"]["ssh_private_key"])
    assert key.is_file() and key.is_relative_to(aws_mock.home)
    for name, spec in resolved["available_node_types"].items():
        nc = spec["node_config"]
        assert nc["KeyName"] and nc["SubnetIds"] and nc["SecurityGroupIds"], name
        assert nc["ImageId"].startswith("resolve:ssm:/aws/service/"), name
        if name != resolved["head_node_type"]:
            assert nc["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}
    # Subnets only from the listed zones.
    import boto3

    ec2 = boto3.client("ec2", region_name="us-west-2")
    subnet_ids = {
        s
        for spec in resolved["available_node_types"].values()
        for s in spec["node_config"]["SubnetIds"]
    }
    zones = {
        s["AvailabilityZone"] for s in ec2.describe_subnets(SubnetIds=sorted(subnet_ids))["Subnets"]
    }
    assert zones <= set(raw["provider"]["availability_zone"].split(","))


def _ec2_hardware(catalogue: list[dict], instance_type: str) -> dict:
    info = next(t for t in catalogue if t["InstanceType"] == instance_type)
    gpus = sum(g["Count"] for g in info.get("GpuInfo", {}).get("Gpus", []))
    return {"CPU": info["VCpuInfo"]["DefaultVCpus"], "GPU": gpus}
