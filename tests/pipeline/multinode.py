"""Run sdt-ray jobs on one simulated 2-node Ray cluster (ray.cluster_utils.Cluster) in a
process of its own (the test session already has its own local Ray), and print a JSON result
per job, in order, as one list. Jobs are separated by `--`:

    python tests/pipeline/multinode.py train FEATURES RUN_DIR -- predict CHECKPOINT FEATURES OUTPUT [LOCAL_OUTPUT] \
        -- import ARCHIVE OUTPUT -- extract UTTERANCES OUTPUT TEXT_MODEL

Each job's result names the Ray nodes its work ran on (`work_nodes`).

One cluster serves every job (its start and stop cost about 10 s). Each node gets 1 CPU; the
cluster's processes are stopped by Cluster.shutdown (by PID)."""

import json
import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str]) -> list[dict]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        # Dispatch only once every pool actor is up: by default Ray Data starts them asynchronously,
        # and on a cold start one actor could finish a tiny job before the other node's was ready.
        ray.data.DataContext.get_current().wait_for_min_actors_s = 300
        nodes = sum(1 for n in ray.nodes() if n["Alive"])
        return [{"nodes": nodes, **run_job(cluster.address, job)} for job in jobs(argv)]
    finally:
        ray.shutdown()
        cluster.shutdown()


def jobs(argv: list[str]) -> list[list[str]]:
    found, current = [], []
    for arg in argv + ["--"]:
        if arg == "--":
            found.append(current)
            current = []
        else:
            current.append(arg)
    return [job for job in found if job]


def run_job(address: str, job: list[str]) -> dict:
    from sdt_ray.errors import ConfigError
    from sdt_ray.pipelines import predict_job

    if job[0] == "train":
        return train_on(address, *job[1:3])
    if job[0] == "import":
        from sdt_ray.pipelines.calls import CallImportOptions, import_calls_job

        summary = import_calls_job(job[1], job[2], CallImportOptions(calls_per_part=1), address=address, log=lambda m: None)
        return {"calls": summary.calls, "turns": summary.turns, "work_nodes": len(summary.nodes)}
    if job[0] == "extract":
        from sdt_ray.pipelines import ExtractOptions, extract

        summary = extract(job[1], job[2], ExtractOptions(text_model=job[3], batch_size=4), address=address, log=lambda m: None)
        return {"rows_out": summary.rows_out, "errors": summary.errors, "work_nodes": len(summary.nodes)}
    command, checkpoint, features, output = job[:4]
    assert command == "predict"
    from sdt_ray.scoring import PredictOptions

    options = PredictOptions(rows_per_file=8)  # several tasks: one scoring actor per node gets work
    summary = predict_job(checkpoint, features, output, options, address=address, log=lambda m: None)
    result = {"rows_in": summary.rows_in, "rows_out": summary.rows_out, "errors": summary.errors, "work_nodes": len(summary.nodes)}
    if len(job) > 4:
        try:
            predict_job(checkpoint, features, job[4], options, address=address, log=lambda m: None)
            result["refused"] = None
        except ConfigError as exc:
            result["refused"] = str(exc)
    return result


def train_on(address: str, features: str, run_dir: str) -> dict:
    """2 workers, one per node (STRICT_SPREAD), 2 epochs; checkpoints and best/ under run_dir."""
    import dataclasses

    from sdt_ray.config import RecipeConfig
    from sdt_ray.train import train

    recipe = RecipeConfig()
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(
        recipe.train, workers=2, epochs=2, placement="STRICT_SPREAD", batch_size=4))
    result = train(features, run_dir, recipe, address=address, log=lambda m: None)
    return {"best_epoch": result.best_epoch, "best_dir": str(result.best_dir), "epochs_run": result.epochs_run}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
