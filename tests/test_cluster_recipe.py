"""The README's "On a Ray cluster" recipe, run as written on a two-node cluster on loopback.

The recipe's lines are taken from the README and run in one bash session of their own, with only
what a single test machine needs changed: addresses and ports (loopback, free ports), the shared
folder (a temporary one), the venv (this one, not a fresh ``scripts/setup.sh``), one CPU per node,
and the job's arguments (a small sample run instead of Ego4D). Both Ray nodes, their workers and
the job live in that session, so the test stops exactly the processes it started, never
``ray stop`` (which would stop other users' Ray on this host too).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runs import MAGMA_DATA, SMALL, data_files, magma_run, reap

README = Path(__file__).resolve().parents[1] / "README.md"
VENV_BIN = Path(MAGMA_DATA).parent
#: the sample run the job makes instead of the README's Ego4D one: 40 windows, so Ray has tasks for both nodes
JOB_ARGS = (*SMALL, "--window-stride", "4", "--limit", "40")  # the last of a repeated option wins


def recipe_lines() -> list[str]:
    """The bash lines of the README's cluster recipe, continuation lines joined, comments dropped."""
    text = README.read_text()
    block = re.search(r"<!-- cluster recipe:.*?-->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its cluster recipe block"
    joined = block.group(1).replace("\\\n", " ")
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_loopback(lines: list[str], shared: Path, output: Path, temp_dir: Path) -> str:
    """The recipe as one bash script for this machine; fails if a line the recipe needs is missing."""
    gcs, dashboard = free_port(), free_port()
    script = ["set -euo pipefail"]
    for line in lines:
        line = line.replace("/shared/", f"{shared}/").replace("head:6379", f"127.0.0.1:{gcs}")
        line = line.replace("http://head:8265", f"http://127.0.0.1:{dashboard}").replace("0.0.0.0", "127.0.0.1")
        line = line.replace("--port=6379", f"--port={gcs}")
        line = line.replace("--dashboard-port=8265", f"--dashboard-port={dashboard}")
        if line.startswith("scripts/setup.sh --cluster"):  # the install is this test's venv
            line = f"source {VENV_BIN / 'activate'}"
        elif line.startswith("ray start"):
            line += " --num-cpus=1 --node-ip-address=127.0.0.1 --disable-usage-stats"
            if "--head" in line:
                line += f" --temp-dir={temp_dir}"
        elif line.startswith("ray job submit"):
            command, _, _ = line.partition(" magma-data run ")
            line = f"{command} magma-data run video_tom --output {output} {' '.join(JOB_ARGS)} --ray-address=auto"
        script.append(line)
    needed = ("RAY_AUTH_MODE=token", "ray start --head", "--include-dashboard=true", "ray start --address",
              "ray job submit", "--ray-address=auto", "activate")
    missing = [n for n in needed if not any(n in line for line in script)]
    assert not missing, f"the README's cluster recipe lacks {missing}"
    script.append(f"ray list tasks --address=http://127.0.0.1:{dashboard} --detail --format=json --limit=10000 "
                  f"> {shared}/tasks.json")
    return "\n".join(script)


@pytest.mark.slow
def test_the_readme_cluster_recipe_runs_on_two_nodes_and_equals_a_local_run(tmp_path):
    shared, output, local = tmp_path / "shared", tmp_path / "shared" / "out", tmp_path / "local"
    shared.mkdir()
    temp_dir = Path(f"/tmp/magma-ray-{os.getpid()}")  # Ray's socket paths must stay short
    script = on_loopback(recipe_lines(), shared, output, temp_dir)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env["PATH"] = "/usr/bin:/bin"  # as a fresh login shell: only `source .../activate` brings magma-data
    cluster = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        log, _ = cluster.communicate(timeout=600)
    finally:
        cluster.kill()
        reap(cluster.pid, grace_s=0)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)
    assert cluster.returncode == 0, log[-4000:]

    tasks = json.loads((shared / "tasks.json").read_text())
    stage_nodes = {task["node_id"] for task in tasks if "run_stage" in task["name"] and task["state"] == "FINISHED"}
    assert len(stage_nodes) == 2, f"the windows ran on {len(stage_nodes)} node(s): {log[-2000:]}"

    alone = magma_run(local, *JOB_ARGS)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert data_files(output) == data_files(local) and len(data_files(local)) == 20
