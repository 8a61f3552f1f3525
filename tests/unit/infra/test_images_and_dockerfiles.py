"""Every image is pinned by an explicit version tag and the versions agree with each other and with
pyproject.toml's ranges; Dockerfiles: pinned FROM, non-root USER before CMD/ENTRYPOINT, no
secret-looking ENV/ARG values, COPY sources present in the build context."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from tests.unit.infra.manifests import (
    CONSTRAINTS,
    DOCKERFILES,
    INFRA,
    PROJECT_IMAGE,
    REPO,
    SECRET_NAME,
    all_image_references,
    constraints,
    dockerignore_allows,
    env_assignments,
    image_tag,
    is_pinned,
    package_version,
    parse_dockerfile,
    pyproject_ranges,
    ray_cluster_document,
)

# --- images and versions --------------------------------------------------------------------------


def test_every_image_is_pinned_by_version() -> None:
    unpinned = [(where, image) for where, image in all_image_references() if not is_pinned(image)]
    assert not unpinned, f"images without an explicit version tag (no latest, no untagged): {unpinned}"


def test_project_image_tag_is_the_package_version() -> None:
    version = package_version()
    refs = [(where, image) for where, image in all_image_references() if image.split(":")[0] == PROJECT_IMAGE]
    assert len(refs) >= 6
    wrong = [(where, image) for where, image in refs if image_tag(image) != version]
    assert not wrong, (
        f"the project image is {PROJECT_IMAGE}:{version} (pyproject version); these differ: {wrong}"
    )


def test_pinned_versions_are_inside_pyproject_ranges() -> None:
    ranges = pyproject_ranges()
    for name, version in constraints().items():
        assert name in ranges, f"{CONSTRAINTS}: {name} is not a dependency in pyproject.toml"
        assert ranges[name].contains(version), (
            f"{CONSTRAINTS}: {name}=={version} is outside pyproject's {ranges[name]}"
        )
    assert {"prefect", "ray", "mlflow", "torch"} <= set(constraints())


def test_versions_agree_across_manifests() -> None:
    pins = constraints()
    images = dict(all_image_references())
    base = images["Dockerfile"]
    assert base.startswith("pytorch/pytorch:"), base
    assert image_tag(base).split("-")[0] == str(pins["torch"]), (
        f"constraints torch must be the base image's ({base})"
    )
    assert image_tag(images["compose:prefect-server"]).startswith(f"{pins['prefect']}-"), (
        "Prefect server != worker"
    )
    assert f"mlflow[auth]=={pins['mlflow']}" in (INFRA / "docker" / "mlflow-server.Dockerfile").read_text()
    assert image_tag(images["compose:mlflow"]) == str(pins["mlflow"])
    raycluster = ray_cluster_document()
    assert raycluster["spec"]["rayVersion"] == str(pins["ray"]), (
        "RayCluster rayVersion must be the image's Ray"
    )
    prefect_yaml = REPO / "prefect.yaml"
    if prefect_yaml.exists():
        declared = yaml.safe_load(prefect_yaml.read_text()).get("prefect-version")
        assert declared in (None, str(pins["prefect"])), f"prefect.yaml prefect-version {declared} != image's"


# --- Dockerfiles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_and_bakes_no_secrets(dockerfile: Path) -> None:
    instructions = parse_dockerfile(dockerfile)
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert froms and all(is_pinned(args.split()[0]) for args in froms), f"{dockerfile}: unpinned FROM {froms}"
    user = "root"
    saw_start = False
    for keyword, args in instructions:
        if keyword == "USER":
            user = args.split(":")[0]
        if keyword in ("CMD", "ENTRYPOINT"):
            saw_start = True
            assert user not in ("root", "0"), (
                f"{dockerfile}: {keyword} runs as root; add USER <non-root> before it"
            )
        if keyword in ("ENV", "ARG"):
            for name, value in env_assignments(keyword, args).items():
                assert not (SECRET_NAME.search(name) and value), (
                    f"{dockerfile}: {keyword} {name} bakes a secret"
                )
    assert saw_start, f"{dockerfile}: no CMD or ENTRYPOINT"
    assert user not in ("root", "0"), f"{dockerfile}: the final USER is root"


def test_project_dockerfile_copies_only_what_the_build_context_sends() -> None:
    dockerfile = INFRA / "docker" / "Dockerfile"
    ignore = dockerfile.with_name("Dockerfile.dockerignore")
    copies = [args for keyword, args in parse_dockerfile(dockerfile) if keyword in ("COPY", "ADD")]
    assert copies
    for args in copies:
        *sources, _ = [token for token in shlex.split(args) if not token.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), (
                f"{dockerfile}: COPY source {source} is not in the repository root"
            )
            assert dockerignore_allows(ignore, source), (
                f"{ignore} excludes {source}, which the Dockerfile copies"
            )
    for excluded in (".venv", ".git", "tests", "infra/compose/.env.example"):
        assert not dockerignore_allows(ignore, excluded), (
            f"{ignore} must keep {excluded} out of the build context"
        )
    text = dockerfile.read_text()
    assert (
        "--constraint /opt/cyclegan/constraints.txt" in text
        and "docker build -f infra/docker/Dockerfile" in text
    )
