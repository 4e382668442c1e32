"""The repository contract: pins, notebooks, dvc.yaml wiring, and DVC reruns on a tiny copy of the pipeline."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _pins(lines):
    return {l.split("==")[0].lower(): l.split("==")[1] for l in lines if "==" in l}


def test_environment_yml_and_requirements_agree():
    req = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines()
           if l.strip() and not l.startswith("#")]
    assert all("==" in l for l in req), "requirements.txt pins exactly"
    assert req[0] == "torch==2.13.0"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in env["dependencies"]
    assert _pins(req) == _pins(pip_section)


def _notebook_parameters(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    return set(re.findall(r"^(\w+)\s*=", cells[0].source, flags=re.M)), nb


def _stages():
    """(name, definition) per stage; a foreach stage is given by its `do` template."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [(name, stage.get("do", stage)) for name, stage in stages.items()]


def test_notebooks_are_stripped_and_take_the_parameters_their_stage_passes():
    for name, stage in _stages():
        cmd = stage["cmd"]
        notebook = ROOT / re.search(r"papermill (\S+\.ipynb)", cmd).group(1)
        declared, nb = _notebook_parameters(notebook)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{notebook} has outputs"
        passed = set(re.findall(r"-p (\w+) ", cmd))
        assert passed <= declared, f"stage {name} passes unknown parameters {passed - declared}"
        assert "-k python3" in cmd and str(notebook.relative_to(ROOT)) in [d for d in stage["deps"]]


def test_every_templated_param_is_declared_as_a_stage_param():
    """DVC reruns a stage when a param it declares changes: every ${...} in a command must be declared."""
    for name, stage in _stages():
        declared = {key for entry in stage.get("params", []) for keys in entry.values() for key in keys}
        for used in re.findall(r"\$\{([\w.]+)\}", stage["cmd"]):
            if used == "key" or used.startswith("item."):
                continue  # foreach: covered by the declared `...${key}` entry
            assert any(used == d or used.startswith(d + ".") or (d.endswith("${key}") and used.startswith(
                d[:-len("${key}")])) for d in declared), f"stage {name} reads {used} without declaring it"


@pytest.mark.parametrize("params_dir", ["params", "params/released"])
def test_every_templated_param_exists_in_both_param_sets(params_dir):
    """`cp params/released/*.yaml params/` must give a pipeline DVC can template: each ${a.b.c} a command reads
    (foreach items aside) is a key of the matching params file, in the embedded and in the released set."""
    values = {}
    for f in sorted((ROOT / params_dir).glob("*.yaml")):
        values.update(yaml.safe_load(f.read_text()))
    missing = set()
    for name, stage in _stages():
        for used in re.findall(r"\$\{([\w.]+)\}", stage["cmd"]):
            if used == "key" or used.startswith("item."):
                continue
            node = values
            for part in used.split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.add(f"{name}: {used}")
                    break
                node = node[part]
    assert not missing, f"{params_dir} lacks {sorted(missing)}"


def _run(cmd, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _ran(output):
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_dvc_reruns_only_what_a_param_change_touches(tmp_path):
    """A tiny copy of the data + report stages: repro, no-op repro, clean status, targeted reruns."""
    for item in ["notebooks", "opensora_lib", "params", "reports/bench"]:
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    keep = {"data", "report"}
    produced = {p for s in keep for o in pipeline["stages"][s].get("outs", []) + pipeline["stages"][s].get(
        "metrics", []) for p in ([o] if isinstance(o, str) else o)}
    pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in keep}
    report = pipeline["stages"]["report"]
    report["deps"] = [d for d in report["deps"] if not d.startswith(("metrics/", "reports/figures/")) or d in produced]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    data_params = yaml.safe_load((tmp_path / "params/data.yaml").read_text())
    data_params["data"].update(num_samples=4, min_frames=5, max_frames=9, max_duration=0.6)
    (tmp_path / "params/data.yaml").write_text(yaml.safe_dump(data_params))

    _run(["dvc", "init", "--no-scm", "-q"], tmp_path)
    _run(["dvc", "config", "core.analytics", "false"], tmp_path)
    assert _ran(_run(["dvc", "repro"], tmp_path)) == {"data", "report"}
    assert (tmp_path / "reports/index.html").exists()
    metrics = json.loads((tmp_path / "metrics/data.json").read_text())
    assert metrics["num_samples"] == 4
    assert "up to date" in _run(["dvc", "status"], tmp_path)
    assert _ran(_run(["dvc", "repro"], tmp_path)) == set()

    data_params["data"]["num_samples"] = 5
    (tmp_path / "params/data.yaml").write_text(yaml.safe_dump(data_params))
    assert _ran(_run(["dvc", "repro"], tmp_path)) == {"data", "report"}
    assert json.loads((tmp_path / "metrics/data.json").read_text())["num_samples"] == 5

    report_params = yaml.safe_load((tmp_path / "params/report.yaml").read_text())
    report_params["report"]["title"] = "another title"
    (tmp_path / "params/report.yaml").write_text(yaml.safe_dump(report_params))
    assert _ran(_run(["dvc", "repro"], tmp_path)) == {"report"}
    assert "another title" in (tmp_path / "reports/index.html").read_text()


def test_changing_adapt_step_5_reruns_steps_5_to_8_and_what_follows_only():
    """Issue #5: adapt@N reads adapt.common + adapt.steps.N only and the previous step's checkpoint, so a change to
    step 5's length invalidates adapt@5..8, the video stages and what depends on them, never image_base or 1-4."""
    import networkx as nx
    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    stages = {s.addressing: s for s in repo.index.stages}
    readers = {name for name, s in stages.items()
               for p in s.params for key in p.params if key in ("adapt.steps.5", "adapt.steps")}
    assert readers == {"adapt@5"}
    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    downstream = {s.addressing for s in nx.ancestors(graph, stages["adapt@5"])}
    assert {"adapt@6", "adapt@7", "adapt@8", "video@1", "video@2", "video@3", "eval", "report"} <= downstream
    assert not downstream & {"image_base", "adapt@1", "adapt@2", "adapt@3", "adapt@4", "data", "vae@3"}
    upstream = {s.addressing for s in nx.descendants(graph, stages["adapt@5"])}
    assert {"adapt@4", "image_base"} <= upstream
