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
import importlib.util
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
TOKEN_FILE = "~/.ray/auth_token"

# deploy/aws/render.py fills the IAM and security-group documents from cluster.yaml's settings
# block; the runbook (docs/cluster.md) pipes its output into the aws CLI.
_spec = importlib.util.spec_from_file_location("render", ROOT / "deploy" / "aws" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

REGISTRY = "123456789012.dkr.ecr.us-west-2.amazonaws.com"
# What a user writes over the shipped CHANGE-ME values (separate buckets, so "the input bucket
# cannot be listed outside the input prefix" is observable).
SAMPLE_SETTINGS = {
    "aws_account_id": "123456789012",
    "input_prefix": "s3://acme-catalog/exports/listings/",
    "output_prefix": "s3://acme-fashion-batch/embeddings/",
    "ssh_cidr": "203.0.113.7/32",
    "head_subnet": "subnet-0123456789abcdef0",
    "worker_subnet": "subnet-0fedcba9876543210",
    "security_group": "sg-0123456789abcdef0",
    "head_image": f"{REGISTRY}/fashion-batch:0.1.0-ray2.60.0-cpu",
    "worker_image": f"{REGISTRY}/fashion-batch:0.1.0-ray2.60.0-gpu",
}


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


def settings_of(config: dict) -> dict:
    """The settings block at the top of cluster.yaml (`metadata`, which Ray does not read)."""
    return config.get("metadata", {}).get("fashion_batch", {})


def filled(config: dict, **values: str) -> dict:
    """`config` with its settings set to SAMPLE_SETTINGS (then `values`), in the settings block
    and wherever a node uses one: after loading, a YAML alias is a plain copy of the anchored
    value, so those are replaced by value (the anchored placeholders are all distinct)."""
    current = settings_of(config)
    new = {k: v for k, v in {**SAMPLE_SETTINGS, **values}.items() if k in current}
    swap = {current[k]: v for k, v in new.items()}

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return swap.get(node, node) if isinstance(node, str) else node

    result = walk(copy.deepcopy(config))
    if current:
        result["metadata"]["fashion_batch"] = {**current, **new}
    return result


def start_commands(config: dict) -> dict[str, str]:
    """{"head"|"worker": the joined ray start command lines}."""
    return {kind: "\n".join(config[f"{kind}_start_ray_commands"]) for kind in ("head", "worker")}


def worker_types(config: dict) -> dict[str, dict]:
    return {
        name: spec
        for name, spec in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


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


def test_nodes_install_nothing_when_they_start(raw):
    """Every package is in the image (deploy/docker/Dockerfile): no command a node runs at launch
    installs one, least of all a multi-GB CUDA torch, so every start is the same."""
    config = prepared(raw)
    install = re.compile(r"\b(pip3?|conda|mamba|uv)\b.*\binstall\b|\bapt(-get)?\b.*\binstall\b")
    for node_type in config["available_node_types"]:
        commands = [
            *config["initialization_commands"],
            *effective_setup_commands(config, node_type),
            *config["head_start_ray_commands"],
            *config["worker_start_ray_commands"],
        ]
        assert not [c for c in commands if install.search(c)], node_type
        assert not [c for c in commands if "torch==" in c or "whl/cpu" in c], node_type


def _tag(image: str) -> str:
    name, _, tag = image.rpartition(":")
    assert name and "/" in name and tag, f"{image}: REPOSITORY:TAG"
    return tag


def test_every_node_runs_a_pinned_image_cpu_head_gpu_workers(raw):
    """Ray takes head_image / worker_image over `image`; each is a tag that never moves, built
    from the same Dockerfile and version: the CPU build on the head, the CUDA build on workers."""
    config = prepared(raw)
    docker = config["docker"]
    assert docker.get("container_name")
    head, worker = docker["head_image"], docker["worker_image"]
    assert head.rpartition(":")[0] == worker.rpartition(":")[0]  # one repository
    head_tag, worker_tag = _tag(head), _tag(worker)
    assert "latest" not in (head_tag, worker_tag)
    assert head_tag.endswith("-cpu") and worker_tag.endswith("-gpu")
    assert head_tag.removesuffix("-cpu") == worker_tag.removesuffix("-gpu")
    # The tag names the Ray it carries: the one constraints.txt pins.
    assert f"-ray{_pins()['ray']}-" in head_tag
    for name, spec in config["available_node_types"].items():
        assert "docker" not in spec or not {"image", "worker_image"} & set(spec["docker"]), name
    # The GPU workers check the image sees the GPU before Ray starts there.
    assert any("torch.cuda.is_available()" in c for c in config["worker_setup_commands"])


def _pins() -> dict[str, str]:
    return dict(
        line.strip().split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )


def _dockerfile() -> tuple[str, dict[str, str]]:
    """(the Dockerfile's text with continuation lines joined, its ARG defaults)."""
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    return text, args


def test_image_is_built_on_the_ray_and_python_of_constraints(raw):
    """The base image's Ray is constraints.txt's (and the client's), on the client's Python
    minor: Ray refuses a client of another version, and pip would replace the image's Ray."""
    text, args = _dockerfile()
    (base,) = re.findall(r"^FROM (\S+)", text, re.M)
    minor = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert base == f"rayproject/ray:${{RAY_VERSION}}-{minor}-${{VARIANT}}"
    assert args["RAY_VERSION"] == _pins()["ray"] == version("ray")
    assert "latest" not in base


def test_image_installs_pinned_torch_then_the_project_with_constraints():
    """torch first, pinned: the CPU build from PyTorch's index for the CPU image, PyPI's Linux
    wheel (the CUDA build) for the GPU image; then the project and its [cluster] extra with
    constraints.txt, which finds torch satisfied. The same torch CI tests (Makefile)."""
    text, args = _dockerfile()
    makefile_torch = re.search(r"torch==([\w.+]+)", (ROOT / "Makefile").read_text()).group(1)
    assert args["TORCH_VERSION"] == makefile_torch
    torch_run = next(line for line in text.splitlines() if "torch==${TORCH_VERSION}" in line)
    cpu, gpu = torch_run.split("else", 1)
    assert '"$VARIANT" = "cpu"' in cpu and "download.pytorch.org/whl/cpu" in cpu
    assert "pip install" in gpu and "--index-url" not in gpu and "whl/" not in gpu
    project = next(line for line in text.splitlines() if '".[cluster]"' in line)
    assert "-c constraints.txt" in project
    assert text.index("torch==${TORCH_VERSION}") < text.index('".[cluster]"')
    # What the image copies exists, and the build context leaves out .venv and .git.
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[[line.startswith("#") for line in ignore].index(False)] == "*"


def test_file_mounts_are_the_token_only(raw):
    """The code and its dependencies are in the image; the one file the laptop gives the nodes
    is Ray's auth token. Mounting "." would hash and rsync .venv on every `ray up`."""
    assert raw["file_mounts"] == {TOKEN_FILE: TOKEN_FILE}


def test_cluster_extra_brings_jobs_api_and_ec2_client(raw):
    """cluster.yaml replaces Ray's default head_setup_commands, which pip-install boto3: the
    autoscaler on the head needs it to launch workers, and the Jobs API needs ray[default].
    Both come from the [cluster] extra that the image installs."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {re.split(r"[<>=!~; ]", req, maxsplit=1)[0] for req in extras["cluster"]}
    assert {"ray[default]", "boto3"} <= names
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^boto3==", pins, re.M) and re.search(r"^aiohttp-cors==", pins, re.M)
    assert '".[cluster]"' in _dockerfile()[0]


def test_model_dir_reaches_every_worker(raw):
    """Workers get the head's model dir at launch; it must not hide inside a file mount (the
    laptop's copy would overwrite what `train` wrote on the head)."""
    synced = raw["cluster_synced_files"]
    assert synced == ["/home/ubuntu/fashion-batch-models"]
    assert raw["auth"]["ssh_user"] == "ubuntu"  # the paths above are that user's home
    mounts = [Path(r.replace("~", "/home/ubuntu", 1)) for r in raw["file_mounts"]]
    assert not any(Path(synced[0]) in (m, *m.parents) for m in mounts)
    assert raw["file_mounts_sync_continuously"] is False


# ----------------------------------------------------------------------------- least privilege


def test_workers_have_their_own_instance_profile(raw):
    """The head's role launches and ends workers; the workers' role may only touch S3. Not Ray's
    default `ray-autoscaler-v1` (AmazonEC2FullAccess + AmazonS3FullAccess) on any node."""
    settings = settings_of(raw)
    head = raw["available_node_types"][raw["head_node_type"]]["node_config"]
    assert head.get("IamInstanceProfile") == {"Name": settings.get("head_role")}
    for name, spec in worker_types(raw).items():
        profile = spec["node_config"].get("IamInstanceProfile")
        assert profile == {"Name": settings.get("worker_role")}, name
        assert profile != head["IamInstanceProfile"], name
    assert settings["head_role"] != settings["worker_role"]
    assert "ray-autoscaler-v1" not in repr(raw)
    # Credentials from the instance metadata service only with a session token (IMDSv2).
    for name, spec in raw["available_node_types"].items():
        assert spec["node_config"].get("MetadataOptions", {}).get("HttpTokens") == "required", name


def test_worker_policy_reads_input_and_writes_output_only(raw):
    config = filled(raw)
    policy = render.render("worker-policy", config)
    settings = settings_of(config)
    in_bucket, in_prefix = settings["input_prefix"][5:].rstrip("/").split("/", 1)
    out_bucket, out_prefix = settings["output_prefix"][5:].rstrip("/").split("/", 1)
    assert in_bucket != out_bucket  # SAMPLE_SETTINGS: keeps the list checks below meaningful

    allowed = {"s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:DeleteObject"}
    allowed.add("s3:AbortMultipartUpload")  # pyarrow aborts the multipart upload of a failed write
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st
        assert set(_as_list(st["Action"])) <= allowed, st
        for resource in _as_list(st["Resource"]):
            bucket = resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
            assert resource.startswith("arn:aws:s3:::") and bucket in (in_bucket, out_bucket), st
            # An object ARN is the prefix itself or lies under "prefix/": "prefix*" would also
            # match a sibling "prefix-old/".
            if "/" in resource.removeprefix("arn:aws:s3:::"):
                key = resource.removeprefix("arn:aws:s3:::").split("/", 1)[1]
                assert key in (in_prefix, f"{in_prefix}/*", out_prefix, f"{out_prefix}/*"), st

    def can(action, bucket, key=None, prefix=None):
        return _s3_allows(policy, action, bucket, key, prefix)

    # What the job does (embed: discover, read; resume: list, read _state; write beside, move =
    # copy + delete, delete its own files; train: checkpoints under the output prefix).
    assert can("s3:GetObject", in_bucket, f"{in_prefix}/part-0.parquet")
    assert can("s3:GetObject", in_bucket, in_prefix)  # stat of `--input s3://.../PREFIX/`
    assert can("s3:ListBucket", in_bucket, prefix=f"{in_prefix}/")
    for key in (f"{out_prefix}/2026-11-28/part-00000.parquet", f"{out_prefix}/2026-11-28/_state/"):
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
            assert can(action, out_bucket, key), (action, key)
    assert can("s3:PutObject", out_bucket, f"{out_prefix}/")  # pyarrow's folder marker
    assert can("s3:ListBucket", out_bucket, prefix=f"{out_prefix}/2026-11-28/")
    assert can("s3:ListBucket", out_bucket)  # HeadBucket (pyarrow): docs/cluster.md
    # ... and nothing else.
    for action in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert not can(action, in_bucket, f"{in_prefix}/part-0.parquet"), action
        assert not can(action, out_bucket, out_prefix), action
        assert not can(action, out_bucket, f"{out_prefix}-old/x.parquet"), action
        assert not can(action, out_bucket, "other/x.parquet"), action
    for bucket, key in ((in_bucket, f"{in_prefix}-old/x"), (in_bucket, "x"), (out_bucket, "x")):
        assert not can("s3:GetObject", bucket, key), (bucket, key)
    assert not can("s3:ListBucket", in_bucket, prefix="")
    assert not can("s3:ListBucket", in_bucket, prefix=f"{in_prefix}-old/")
    assert not can("s3:GetObject", "some-other-bucket", f"{in_prefix}/part-0.parquet")


def test_head_policy_launches_and_ends_only_this_clusters_workers(raw):
    config = filled(raw)
    settings = settings_of(config)
    policy = render.render("head-policy", config)
    account, region = settings["aws_account_id"], config["provider"]["region"]
    by_action: dict[str, list[dict]] = {}
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st
        for action in _as_list(st["Action"]):
            assert "*" not in action, st
            by_action.setdefault(action, []).append(st)
        if "*" in _as_list(st["Resource"]):  # only for calls that have no resource-level scope
            assert all(a.startswith("ec2:Describe") for a in _as_list(st["Action"])), st
    assert set(by_action) == {
        "ec2:DescribeInstances",
        "ec2:RunInstances",
        "ec2:CreateTags",
        "ec2:TerminateInstances",
        "iam:PassRole",
        "ssm:GetParameters",
    }
    cluster = config["cluster_name"]
    instance_arn = f"arn:aws:ec2:{region}:{account}:instance/*"
    launch = [s for s in by_action["ec2:RunInstances"] if instance_arn in _as_list(s["Resource"])]
    assert launch and all(
        s["Condition"]["StringEquals"]
        == {"aws:RequestTag/ray-cluster-name": cluster, "aws:RequestTag/ray-node-type": "worker"}
        for s in launch
    )
    network = {r for s in by_action["ec2:RunInstances"] for r in _as_list(s["Resource"])}
    assert {r for r in network if ":subnet/" in r or ":security-group/" in r} == {
        f"arn:aws:ec2:{region}:{account}:subnet/{settings['worker_subnet']}",
        f"arn:aws:ec2:{region}:{account}:security-group/{settings['security_group']}",
    }
    (terminate,) = by_action["ec2:TerminateInstances"]
    assert terminate["Condition"]["StringEquals"] == {
        "ec2:ResourceTag/ray-cluster-name": cluster,
        "ec2:ResourceTag/ray-node-type": "worker",
    }
    for tag in by_action["ec2:CreateTags"]:
        assert tag["Condition"]["StringEquals"] in (
            {"ec2:CreateAction": "RunInstances"},
            {"ec2:ResourceTag/ray-cluster-name": cluster},
        )
    (pass_role,) = by_action["iam:PassRole"]
    assert pass_role["Resource"] == f"arn:aws:iam::{account}:role/{settings['worker_role']}"
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    # Exactly the public SSM parameters the worker types resolve their AMI from.
    ssm = {r for s in by_action["ssm:GetParameters"] for r in _as_list(s["Resource"])}
    images = {spec["node_config"]["ImageId"] for spec in worker_types(config).values()}
    assert ssm == {
        f"arn:aws:ssm:{region}::parameter{i.removeprefix('resolve:ssm:')}"
        for i in images
        if i.startswith("resolve:ssm:")
    }


WIDER = {  # setting: (value, what the refusal says)
    "SSH from anywhere": ("ssh_cidr", "0.0.0.0/0", "not the internet"),
    "output inside input": (
        "output_prefix",
        "s3://acme-catalog/exports/listings/out/",
        "overlap",
    ),
    "whole bucket": ("input_prefix", "s3://acme-catalog/", "expected s3://BUCKET/PREFIX/"),
    "output below a folder": (
        "output_prefix",
        "s3://acme-fashion-batch/team/embeddings/",
        "one level below the bucket",
    ),
    "one role for both": ("worker_role", "fashion-batch-head", "must differ"),
    "a moving image tag": ("worker_image", f"{REGISTRY}/fashion-batch:latest", "not latest"),
    "an untagged image": ("head_image", f"{REGISTRY}/fashion-batch", "REPOSITORY:TAG"),
    "an image of another account": (
        "head_image",
        "210987654321.dkr.ecr.us-west-2.amazonaws.com/fashion-batch:0.1.0-ray2.60.0-cpu",
        "not in account 123456789012",
    ),
    "two repositories": ("head_image", f"{REGISTRY}/other:0.1.0-ray2.60.0-cpu", "one repository"),
}


@pytest.mark.parametrize(("key", "value", "message"), WIDER.values(), ids=WIDER.keys())
def test_render_refuses_settings_that_widen_access(raw, key, value, message):
    config = filled(raw)
    settings_of(config)[key] = value
    with pytest.raises(render.SettingsError, match=message):
        render.render("worker-policy", config)


def test_shipped_settings_must_be_edited_before_rendering(raw):
    with pytest.raises(render.SettingsError, match="aws_account_id"):
        render.render("worker-policy", raw)
    for name in render.DOCUMENTS:  # every template parses and every placeholder is known
        assert render.render(name, filled(raw))


def test_ecr_policy_pulls_only_the_clusters_repository(raw):
    """What both roles need to start the image (docs/cluster.md attaches it to each): a Docker
    login to the registry (GetAuthorizationToken has no resource-level scope) and reading the
    one repository the images are in; no push, no other repository."""
    config = filled(raw)
    policy = render.render("ecr-pull-policy", config)
    account, region = settings_of(config)["aws_account_id"], config["provider"]["region"]
    grants = {}
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st
        for action in _as_list(st["Action"]):
            grants.setdefault(action, set()).update(_as_list(st["Resource"]))
    repository = f"arn:aws:ecr:{region}:{account}:repository/fashion-batch"
    assert grants == {
        "ecr:GetAuthorizationToken": {"*"},
        "ecr:BatchCheckLayerAvailability": {repository},
        "ecr:BatchGetImage": {repository},
        "ecr:GetDownloadUrlForLayer": {repository},
    }
    # The nodes log in to that registry (the account's own, in the cluster's region).
    (login,) = raw["initialization_commands"]
    assert f"--region {region}" in login and f".dkr.ecr.{region}.amazonaws.com" in login


def test_dashboard_listens_on_localhost_only(raw):
    """Reached through `ray dashboard cluster.yaml` (an SSH tunnel to the head's localhost)."""
    commands = start_commands(raw)
    assert "--dashboard-host=127.0.0.1" in commands["head"]
    assert "0.0.0.0" not in "\n".join(commands.values())


def test_ray_token_auth_is_on_everywhere(raw):
    """Every node starts Ray with RAY_AUTH_MODE=token and the same token: the laptop's
    ~/.ray/auth_token, mounted on the head by `ray up` and synced from the head to each worker."""
    for kind in ("head", "worker"):
        starts = [c for c in raw[f"{kind}_start_ray_commands"] if "ray start" in c]
        assert starts, kind
        for c in starts:
            assert c.index("export RAY_AUTH_MODE=token") < c.index("ray start"), (kind, c)
    every_command = [
        c
        for key in (
            "initialization_commands",
            "setup_commands",
            "head_setup_commands",
            "worker_setup_commands",
            "head_start_ray_commands",
            "worker_start_ray_commands",
        )
        for c in raw[key]
    ]
    assert not any("RAY_AUTH_MODE=disabled" in c for c in every_command)
    assert raw["file_mounts"].get(TOKEN_FILE) == TOKEN_FILE
    # Login shells (`ray exec cluster.yaml 'ray status'`, `ray attach`) use token auth too.
    assert any("export RAY_AUTH_MODE=token" in c and ".bashrc" in c for c in raw["setup_commands"])


def test_workers_get_no_public_ip(raw):
    """Workers: one interface in the private worker subnet, no public address, the cluster's
    security group. Only the head has a public IP (SSH from ssh_cidr); the laptop reaches it
    there (use_external_head_ip) and the head reaches the workers on private IPs."""
    settings = settings_of(raw)
    assert raw["provider"].get("use_internal_ips") is True
    assert raw["provider"].get("use_external_head_ip") is True
    for name, spec in raw["available_node_types"].items():
        nc = spec["node_config"]
        assert not {"SubnetId", "SubnetIds", "SecurityGroupIds"} & set(nc), name
        is_head = name == raw["head_node_type"]
        assert nc.get("NetworkInterfaces") == [
            {
                "DeviceIndex": 0,
                "SubnetId": settings.get("head_subnet" if is_head else "worker_subnet"),
                "Groups": [settings.get("security_group")],
                "AssociatePublicIpAddress": is_head,
                "DeleteOnTermination": True,
            }
        ], name
    assert settings["head_subnet"] != settings["worker_subnet"]


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


@pytest.fixture(scope="module")
def network(aws_mock):
    """What the runbook creates once, in moto's default VPC: the head in a default (public)
    subnet, a private worker subnet, and the cluster's security group with only the rules
    deploy/aws/sg-ingress.json lists."""
    import boto3

    ec2 = boto3.client("ec2", region_name="us-west-2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    public = ec2.describe_subnets(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
            {"Name": "availability-zone", "Values": ["us-west-2a"]},
        ]
    )["Subnets"][0]
    private = ec2.create_subnet(
        VpcId=vpc["VpcId"], AvailabilityZone="us-west-2a", CidrBlock="172.31.128.0/20"
    )["Subnet"]
    group = ec2.create_security_group(
        GroupName="fashion-batch-ray", Description="fashion-batch Ray cluster", VpcId=vpc["VpcId"]
    )
    return {
        "head_subnet": public["SubnetId"],
        "worker_subnet": private["SubnetId"],
        "security_group": group["GroupId"],
    }


def _bootstrapped(raw: dict, network: dict) -> tuple[dict, dict]:
    """(config with the moto network filled in, what `ray up` resolves it to before launch)."""
    from ray.autoscaler._private.commands import _bootstrap_config

    config = filled(raw, **network)
    return config, _bootstrap_config(copy.deepcopy(config), no_config_cache=True)


def test_ray_up_bootstrap_against_mocked_aws(raw, aws_mock, network, caplog):
    """Everything `ray up` does before RunInstances, against moto: the returned config is what
    the launcher would hand to EC2 for the head node."""
    import boto3

    caplog.set_level(logging.WARNING)
    config, resolved = _bootstrapped(raw, network)
    settings = settings_of(config)

    assert "Failed to autodetect node resources" not in caplog.text
    # The profiles are the runbook's, by name; `ray up` creates no IAM role of its own.
    head_type = resolved["head_node_type"]
    head_nc = resolved["available_node_types"][head_type]["node_config"]
    assert head_nc["IamInstanceProfile"] == {"Name": settings["head_role"]}
    assert "IamInstanceProfile" not in resolved["head_node"]
    iam = boto3.client("iam")
    assert (
        iam.list_roles()["Roles"] == [] and iam.list_instance_profiles()["InstanceProfiles"] == []
    )
    key = Path(resolved["auth"]["ssh_private_key"])
    assert key.is_file() and key.is_relative_to(aws_mock.home)
    for name, spec in resolved["available_node_types"].items():
        nc = spec["node_config"]
        assert nc["KeyName"] and nc["SubnetIds"] and nc["SecurityGroupIds"], name
        assert nc["ImageId"].startswith("resolve:ssm:/aws/service/"), name
        if name != head_type:
            assert nc["IamInstanceProfile"] == {"Name": settings["worker_role"]}
            assert nc["SubnetIds"] == [network["worker_subnet"]], name
            assert nc["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is False, name
        assert nc["SecurityGroupIds"] == [network["security_group"]], name
    # Subnets only from the listed zones.
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


def test_security_group_admits_only_ssh_from_one_cidr(raw, aws_mock, network):
    """Ray's own group (`provider.security_group`, or none named) always opens SSH to 0.0.0.0/0,
    so the nodes name the runbook's group and `ray up` leaves its rules alone. Checked on the
    groups the bootstrapped nodes actually get, after the runbook's ingress rules are added."""
    import boto3

    assert "security_group" not in raw["provider"]
    ec2 = boto3.client("ec2", region_name="us-west-2")
    config = filled(raw, **network)
    ec2.authorize_security_group_ingress(
        GroupId=network["security_group"], IpPermissions=render.render("sg-ingress", config)
    )
    _, resolved = _bootstrapped(raw, network)
    group_ids = {
        g
        for spec in resolved["available_node_types"].values()
        for g in spec["node_config"]["SecurityGroupIds"]
    }
    groups = ec2.describe_security_groups(GroupIds=sorted(group_ids))["SecurityGroups"]
    outside = []
    for group in groups:
        for rule in group["IpPermissions"]:
            # From the cluster's own groups: every port (Ray's GCS, object manager, workers).
            assert {p["GroupId"] for p in rule["UserIdGroupPairs"]} <= group_ids, rule
            assert not rule.get("Ipv6Ranges") and not rule.get("PrefixListIds"), rule
            outside += [
                (rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort"), r["CidrIp"])
                for r in rule["IpRanges"]
            ]
    assert outside == [("tcp", 22, 22, settings_of(config)["ssh_cidr"])]


def _ec2_hardware(catalogue: list[dict], instance_type: str) -> dict:
    info = next(t for t in catalogue if t["InstanceType"] == instance_type)
    gpus = sum(g["Count"] for g in info.get("GpuInfo", {}).get("Gpus", []))
    return {"CPU": info["VCpuInfo"]["DefaultVCpus"], "GPU": gpus}


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _glob(pattern: str, value: str) -> bool:
    """IAM's `*` (any characters, `/` included) and `?` (one character)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value) is not None


def _s3_allows(policy: dict, action: str, bucket: str, key=None, prefix=None) -> bool:
    """Whether the Allow statements grant `action` on the object (key) or bucket (no key); for a
    bucket, `prefix` is the ListObjects prefix (None: a HeadBucket, which has no s3:prefix).
    Enough of IAM for these documents: Allow only, StringLike on s3:prefix only."""
    resource = f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")
    for st in policy["Statement"]:
        if action not in _as_list(st["Action"]):
            continue
        if not any(_glob(r, resource) for r in _as_list(st["Resource"])):
            continue
        condition = st.get("Condition")
        if condition:
            assert list(condition) == ["StringLike"] and list(condition["StringLike"]) == [
                "s3:prefix"
            ], condition
            patterns = _as_list(condition["StringLike"]["s3:prefix"])
            if prefix is None or not any(_glob(p, prefix) for p in patterns):
                continue
        return True
    return False
