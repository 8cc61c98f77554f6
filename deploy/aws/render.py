"""Fill the AWS documents in this directory with the settings at the top of cluster.yaml.

    python deploy/aws/render.py worker-policy     # S3: read the input prefix, write the output one
    python deploy/aws/render.py head-policy       # EC2, IAM, SSM: start and end the workers
    python deploy/aws/render.py ec2-trust-policy  # lets EC2 instances assume the two roles
    python deploy/aws/render.py sg-ingress        # the security group's only inbound rules
    python deploy/aws/render.py ecr-pull-policy   # pull the cluster's image from its ECR repository

Prints the JSON document to stdout (docs/cluster.md pipes it into the `aws` CLI). The templates
are plain JSON with `${NAME}` placeholders; the values come from `metadata.fashion_batch` in
cluster.yaml (the block Ray does not interpret), plus its `cluster_name` and `provider.region`.
Settings that would widen access are refused (exit 2) before anything is printed: an unedited
CHANGE-ME, an SSH CIDR open to everyone, an input prefix that overlaps the output prefix.
Needs only PyYAML (a Ray dependency).
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CLUSTER_YAML = HERE.parents[1] / "cluster.yaml"
DOCUMENTS = ("worker-policy", "head-policy", "ec2-trust-policy", "sg-ingress", "ecr-pull-policy")


class SettingsError(ValueError):
    """A setting in cluster.yaml that must be fixed before the documents are used."""


def load_config(path: Path = CLUSTER_YAML) -> dict:
    return yaml.safe_load(path.read_text())


def settings(config: dict) -> dict[str, str]:
    """The template variables, checked. Raises SettingsError naming the setting."""
    try:
        raw = config["metadata"]["fashion_batch"]
    except (KeyError, TypeError):
        raise SettingsError("cluster.yaml has no metadata.fashion_batch settings block") from None
    unset = sorted(k for k, v in raw.items() if "CHANGE-ME" in str(v))
    if unset:
        raise SettingsError(f"edit metadata.fashion_batch in cluster.yaml first: {unset}")
    in_bucket, in_prefix = _s3_prefix(raw["input_prefix"], "input_prefix")
    out_bucket, out_prefix = _s3_prefix(raw["output_prefix"], "output_prefix")
    if in_bucket == out_bucket and _overlap(in_prefix, out_prefix):
        raise SettingsError(
            f"input_prefix and output_prefix overlap ({raw['input_prefix']}, "
            f"{raw['output_prefix']}): the workers could then write into their input"
        )
    if "/" in out_prefix:
        # pyarrow's S3 create_dir(recursive=True), which the job's atomic writer calls, writes
        # an empty "directory" object for every parent of what it creates, starting at the
        # bucket: a deeper prefix would need PutObject on keys outside it.
        raise SettingsError(
            f"output_prefix {raw['output_prefix']!r}: use one level below the bucket "
            "(s3://BUCKET/NAME/); the job's S3 writer creates a folder marker for every "
            "parent folder, which the policy would then have to allow outside the prefix"
        )
    account = str(raw["aws_account_id"])
    if not re.fullmatch(r"\d{12}", account):
        raise SettingsError(f"aws_account_id {account!r}: 12 digits")
    cidr = _ssh_cidr(str(raw["ssh_cidr"]))
    for key, pattern in (
        ("head_subnet", r"subnet-[0-9a-f]+"),
        ("worker_subnet", r"subnet-[0-9a-f]+"),
        ("security_group", r"sg-[0-9a-f]+"),
        ("head_role", r"[\w+=,.@-]{1,64}"),
        ("worker_role", r"[\w+=,.@-]{1,64}"),
    ):
        if not re.fullmatch(pattern, str(raw[key])):
            raise SettingsError(f"{key} {raw[key]!r} does not look like {pattern}")
    if raw["head_role"] == raw["worker_role"]:
        raise SettingsError("head_role and worker_role must differ")
    repository = _image_repository(raw, account, config["provider"]["region"])
    return {
        "INPUT_BUCKET": in_bucket,
        "INPUT_PREFIX": in_prefix,
        "OUTPUT_BUCKET": out_bucket,
        "OUTPUT_PREFIX": out_prefix,
        "ACCOUNT_ID": account,
        "REGION": config["provider"]["region"],
        "CLUSTER_NAME": config["cluster_name"],
        "HEAD_ROLE": raw["head_role"],
        "WORKER_ROLE": raw["worker_role"],
        "WORKER_SUBNET": raw["worker_subnet"],
        "SECURITY_GROUP": raw["security_group"],
        "SSH_CIDR": cidr,
        "IMAGE_REPOSITORY": repository,
    }


def render(name: str, config: dict) -> dict | list:
    """The document `name` with the settings of `config` filled in."""
    if name not in DOCUMENTS:
        raise SettingsError(f"unknown document {name!r}; one of {', '.join(DOCUMENTS)}")
    template = string.Template((HERE / f"{name}.json").read_text())
    values = {k: json.dumps(v)[1:-1] for k, v in settings(config).items()}
    return json.loads(template.substitute(values))


def _image_repository(raw: dict, account: str, region: str) -> str:
    """The one ECR repository both images are in: ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG,
    in the cluster's account and region (the nodes log in to that registry), with a tag that is
    not `latest` (a moving tag would let two nodes of one cluster run different code)."""
    repositories = set()
    for key in ("head_image", "worker_image"):
        image = str(raw[key])
        m = re.fullmatch(
            r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([a-z0-9._/-]+):([\w.-]+)", image
        )
        if not m:
            raise SettingsError(
                f"{key} {image!r}: expected ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG"
            )
        if (m.group(1), m.group(2)) != (account, region):
            raise SettingsError(f"{key} {image!r}: not in account {account}, region {region}")
        if m.group(4) == "latest":
            raise SettingsError(f"{key} {image!r}: pin a tag that never moves, not latest")
        repositories.add(m.group(3))
    if len(repositories) != 1:
        raise SettingsError(
            f"head_image and worker_image: one repository, not {sorted(repositories)}"
        )
    return repositories.pop()


def _s3_prefix(uri: str, key: str) -> tuple[str, str]:
    """("bucket", "a/b") for "s3://bucket/a/b/"; a prefix is required (no whole buckets)."""
    m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/([^*?]+?)/?", str(uri))
    if not m:
        raise SettingsError(f"{key} {uri!r}: expected s3://BUCKET/PREFIX/ (no wildcards)")
    return m.group(1), m.group(2)


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _ssh_cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise SettingsError(f"ssh_cidr {value!r}: {e}") from None
    if net.version != 4 or net.prefixlen < 16:
        raise SettingsError(
            f"ssh_cidr {value!r}: one IPv4 network of at most /16 (your office or VPN, "
            "or your-ip/32), not the internet"
        )
    return str(net)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in DOCUMENTS:
        print(f"usage: python deploy/aws/render.py {{{','.join(DOCUMENTS)}}}", file=sys.stderr)
        return 2
    try:
        document = render(argv[0], load_config())
    except SettingsError as e:
        print(f"deploy/aws/render.py: {e}", file=sys.stderr)
        return 2
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
