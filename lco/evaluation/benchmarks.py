"""Which mteb tasks to run, whether their data is available offline, and the per-category summary."""

from __future__ import annotations

from collections import defaultdict

import mteb
from mteb.abstasks.aggregated_task import AbsTaskAggregate

from lco.errors import ConfigError, DatasetsUnavailable
from lco.hub import hub_reachable


def select_tasks(benchmark: str | None = None, task: str | None = None) -> list:
    """mteb task objects: the single ``task`` if given, else every task of ``benchmark`` (e.g. ``MIEB(lite)``)."""
    if task:
        return [mteb.get_task(task)]
    if not benchmark:
        raise ConfigError("set benchmark=mieb_lite|mieb|maeb or task=<mteb task name>")
    return list(mteb.get_benchmark(benchmark).tasks)


def leaf_tasks(task):
    if isinstance(task, AbsTaskAggregate):
        for sub in task.metadata.tasks:
            yield from leaf_tasks(sub)
    else:
        yield task


def skip_self_matches(tasks: list) -> None:
    """Image-to-image retrieval: a corpus item with the query's own id is the query itself, never an answer.
    (Tasks whose corpus repeats the query under another id already set mteb's ``skip_first_result``.)"""
    for task in tasks:
        for leaf in leaf_tasks(task):
            if getattr(leaf.metadata, "category", None) == "i2i" and hasattr(leaf, "ignore_identical_ids"):
                leaf.ignore_identical_ids = True


def missing_datasets(tasks: list) -> dict[str, list[str]]:
    """``{dataset path@revision: [task names]}`` of datasets that are not in the local HF cache."""
    from huggingface_hub import snapshot_download

    need: dict[tuple[str, str | None], list[str]] = defaultdict(list)
    for task in tasks:
        for leaf in leaf_tasks(task):
            data = leaf.metadata.dataset
            need[(data["path"], data.get("revision"))].append(leaf.metadata.name)
    missing = {}
    for (path, revision), names in need.items():
        try:
            snapshot_download(path, repo_type="dataset", revision=revision, local_files_only=True)
        except Exception:  # noqa: BLE001 - any failure means "not usable offline"
            missing[f"{path}@{revision}" if revision else path] = names
    return missing


def check_available(tasks: list) -> None:
    """Fail fast, naming the datasets, when some are not cached and the hub cannot be reached."""
    if hub_reachable():
        return
    missing = missing_datasets(tasks)
    if missing:
        listing = "; ".join(f"{d} ({', '.join(n)})" for d, n in list(missing.items())[:12])
        more = f" and {len(missing) - 12} more" if len(missing) > 12 else ""
        raise DatasetsUnavailable(
            f"{len(missing)} dataset(s) these tasks need are not in the local Hugging Face cache and the hub cannot "
            f"be reached: {listing}{more}. Download them on a connected machine (mteb caches them under "
            "HF_HOME) or pick tasks whose data you have (task=<name>)."
        )


def summarize(results, tasks: list) -> list[dict]:
    """One row per task type (the paper's categories): mean main score and the number of tasks; then "all"."""
    types = {t.metadata.name: t.metadata.type for t in tasks}
    by_type: dict[str, list[float]] = defaultdict(list)
    for result in results.task_results:
        by_type[types.get(result.task_name, "other")].append(float(result.get_score()))
    rows = [{"category": t, "tasks": len(v), "mean_main_score": sum(v) / len(v)} for t, v in sorted(by_type.items())]
    all_scores = [s for v in by_type.values() for s in v]
    if all_scores:
        rows.append({"category": "all", "tasks": len(all_scores), "mean_main_score": sum(all_scores) / len(all_scores)})
    return rows
