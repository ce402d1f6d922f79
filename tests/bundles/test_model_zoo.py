"""The MONAI Model Zoo's own checks, offline: the property contract and ``configs/inference.json`` alone.

Mirrors the Zoo's ``ci/unit_tests`` pattern (``ConfigWorkflow(...).check_properties()`` on ``train.json`` for the
train workflow and on ``inference.json`` alone for the infer workflow, the weights loader disabled with
``handlers#0#_disabled_``) and its ``verify_net_in_out`` on ``inference.json`` alone. Every bundle command here is
run from the bundle's own folder with bundle-relative paths, as a user of a downloaded Zoo bundle runs it.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
from bundle_cli import REPO, ok
from monai.bundle import ConfigParser, ConfigWorkflow
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

import maskseg_monai
from maskseg_monai.data import ensure_demo_datalist

BUNDLES = ("mae", "amlp", "unetr_seg", "oneshot")
# oneshot's network takes a support image and mask besides the query: the Zoo lists such bundles in its
# exclude_verify_shape_list
SHAPE_CHECKED = ("mae", "amlp", "unetr_seg")


def workflow(bundle: str, files: list[str], kind: str, root: Path) -> ConfigWorkflow:
    """An initialised ``ConfigWorkflow`` of ``bundles/<bundle>/configs/<files>`` writing under ``root``."""
    cfg = REPO / "bundles" / bundle / "configs"
    paths = [str(cfg / f) for f in files]
    flow = ConfigWorkflow(
        config_file=paths[0] if len(paths) == 1 else paths,
        meta_file=str(cfg / "metadata.json"),
        workflow_type=kind,
        bundle_root=str(root),
    )
    flow.initialize()
    return flow


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize(
    "files, kind",
    [(["train.json"], "train"), (["train.json", "evaluate.json"], "train"), (["inference.json"], "infer")],
)
def test_zoo_properties(bundle, files, kind, tmp_path):
    assert workflow(bundle, files, kind, tmp_path).check_properties() == []


def bundle_command(bundle: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` run from ``bundles/<bundle>`` (paths inside the bundle)."""
    cmd = [sys.executable, "-m", "monai.bundle", *args, "--meta_file", "configs/metadata.json",
           "--logging_file", "configs/logging.conf"]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO / "bundles" / bundle, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("bundle", SHAPE_CHECKED)
def test_verify_net_in_out_on_inference_json_alone(bundle):
    out = ok(bundle_command(bundle, "verify_net_in_out", "network_def", "--config_file", "configs/inference.json"))
    assert "verified with no error" in out


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_json_runs_alone(bundle, tmp_path):
    """``python -m monai.bundle run --config_file configs/inference.json`` with the Zoo's override that skips loading
    weights: the demo inputs are built and every one of them gets an output."""
    out = ok(
        bundle_command(
            bundle, "run", "--config_file", "configs/inference.json", "--bundle_root", str(tmp_path),
            "--handlers#0#_disabled_", "true", "--hidden_size", "48", "--mlp_dim", "96", "--num_layers", "4",
            "--num_heads", "4",
        )
    )  # fmt: skip
    outputs = sorted(p for p in (tmp_path / "outputs").rglob("*") if p.is_file())
    assert outputs, out[-3000:]
    assert not (REPO / "bundles" / bundle / "outputs").exists()


SCHEMA = Path(__file__).resolve().parent / "schema" / "meta_schema_20240725.json"


def metadata(bundle: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_validates_against_the_zoo_schema(bundle):
    meta = metadata(bundle)
    assert meta["schema"].rsplit("/", 1)[-1] == SCHEMA.name
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    validator.validate(meta)
    broken = {k: v for k, v in meta.items() if k != "task"}
    with pytest.raises(jsonschema.ValidationError, match="'task' is a required property"):
        validator.validate(broken)
    # scores the Zoo's browser can show, not pointers to the docs
    assert meta["eval_metrics"] and all(isinstance(v, (int, float)) for v in meta["eval_metrics"].values())


def requirement_pins() -> dict[str, str]:
    """``{distribution name: version}`` of ``requirements.txt``'s ``name==version`` lines."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_pins_are_the_tested_versions_and_install_on_every_declared_python(bundle):
    """Each pin is what ``requirements.txt`` installs (so the tests ran with it), and the pinned release supports the
    oldest Python that ``pyproject.toml`` declares (numpy 2.4 needs Python 3.11: the pins and requires-python agree)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = SpecifierSet(project["requires-python"])
    oldest = min(v for v in ("3.10", "3.11", "3.12", "3.13", "3.14") if v in declared)
    meta = metadata(bundle)
    pins = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
    pins |= {canonicalize_name(k): v for k, v in meta["required_packages_version"].items()}
    # the version lives in maskseg_monai.__version__ alone (pyproject reads it: dynamic = ["version"])
    assert project["dynamic"] == ["version"] and "version" not in project
    assert pins.pop("maskseg-monai") == maskseg_monai.__version__ == importlib.metadata.version("maskseg-monai")
    tested = requirement_pins()
    for name, version in pins.items():
        assert tested.get(name) == version, f"{bundle}: {name}=={version}, requirements.txt has {tested.get(name)}"
        dist = importlib.metadata.distribution(name)
        assert dist.version.split("+")[0] == version, f"{name}: installed {dist.version}, pinned {version}"
        supported = SpecifierSet(dist.metadata.get("Requires-Python") or "")
        assert oldest in supported, f"{name}=={version} needs Python {supported}; pyproject declares {declared}"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_ships_its_licence_and_its_data_licence(bundle, tmp_path):
    folder = REPO / "bundles" / bundle
    assert (folder / "LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes()
    assert "Apache License" in (REPO / "LICENSE").read_text()
    text = (folder / "docs" / "data_license.txt").read_text()
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "train.json"))
    demo_set = parser["demo_set"]
    datalist = json.loads(Path(ensure_demo_datalist(tmp_path, demo_set)).read_text())
    assert f"Default demo data: {demo_set} " in text
    assert f"Licence: {datalist['licence']}" in text


# the Model Zoo's README template, as our bundle READMEs spell its headings
TEMPLATE_HEADINGS = ("Model overview", "Data", "Training configuration", "Input and output", "Performance",
                     "MONAI bundle commands", "Export", "References", "License")  # fmt: skip


def _sections(markdown: str) -> dict[str, str]:
    """``{heading: text}`` of a README's ``##`` sections (outside code blocks)."""
    sections, heading, fence = {}, None, False
    for line in markdown.splitlines():
        fence = fence != line.startswith("```")
        if line.startswith("## ") and not fence:
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading is not None:
            sections[heading] += line + "\n"
    return sections


@pytest.mark.parametrize("bundle", BUNDLES)
def test_readme_follows_the_zoo_template_and_quotes_its_eval_metrics(bundle):
    sections = _sections((REPO / "bundles" / bundle / "docs" / "README.md").read_text())
    for heading in TEMPLATE_HEADINGS:
        found = [h for h in sections if h == heading or h.startswith(heading + " ") or h.startswith(heading + ":")]
        assert found, f"{bundle}: no '## {heading}' section; sections: {list(sections)}"
    performance = "".join(text for h, text in sections.items() if h.startswith("Performance"))
    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    for key, value in meta["eval_metrics"].items():
        shown = {f"{value:.2f}", f"{value:.3f}", f"+{value:.2f}"}
        assert any(s in performance for s in shown), f"{bundle}: eval_metrics {key} = {value} not in its Performance"
