"""The cluster examples: accelerate configs that accelerate itself loads, job scripts that parse and
use only options mmrec has."""

import re
import subprocess
from pathlib import Path

import pytest

EX = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name,machines,processes", [("one_node_4gpu.yaml", 1, 4), ("two_nodes_8gpu.yaml", 2, 8)])
def test_accelerate_configs_load(name, machines, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(EX / "accelerate" / name))
    assert (cfg.num_machines, cfg.num_processes, getattr(cfg.distributed_type, "value", cfg.distributed_type)) == (machines, processes, "MULTI_GPU")


@pytest.mark.parametrize("script", ["extract.sbatch", "train.sbatch"])
def test_job_scripts_parse_and_use_real_options(script):
    from typer.main import get_command

    from mmrec.cli import app

    path = EX / "slurm" / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    text = path.read_text()
    command = "extract" if script.startswith("extract") else "train"
    known = {o for p in get_command(app).commands[command].params for o in p.opts}
    used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", text.split(f"mmrec.cli {command}" if "mmrec.cli" in text else f"mmrec {command}", 1)[1].split("\n\n")[0]))
    used -= {"--num_processes"}
    assert used and used <= known, used - known


@pytest.mark.parametrize("path", sorted((EX / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_example_experiments_build_every_run(path):
    """Each example experiment file builds a valid configuration for every (dataset, row, seed), the
    method's own settings included."""
    from mmrec.config import from_dict
    from mmrec.runs.experiment import load_experiment, row_config
    from mmrec.trainers.methods import get_method

    exp, root = load_experiment(path)
    for ds in exp.datasets:
        for row in exp.rows:
            for seed in exp.seeds:
                run = row_config(exp, root, ds, row, seed)
                assert run.train.seed == seed and run.method == exp.rows[row].method
                from_dict(get_method(run.method).Config, run.model, prefix="model.")
