"""A shard's output table and the provenance every shard file carries."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from galaxylib.catalog.shards import output_columns
from galaxylib.inference.classify import Classified


def build_output(inputs: Any, results: Sequence[Classified], class_names: Sequence[str], has_ood: bool) -> Any:
    """id_str, pass-through, predicted_class, confidence, one column per class, in_distribution and
    ood_score (with an OOD check), error: one row per input, in input order."""
    import numpy as np
    import pyarrow as pa

    preds = [r.prediction for r in results]
    columns: dict[str, Any] = {name: inputs.column(name) for name in inputs.column_names}
    columns["predicted_class"] = pa.array([p.predicted_class if p else None for p in preds], pa.string())
    columns["confidence"] = pa.array([p.confidence if p else None for p in preds], pa.float64())
    mask = np.array([p is None for p in preds], dtype=bool)
    probs = np.array(
        [[p.probabilities[n] for n in class_names] if p else [0.0] * len(class_names) for p in preds], dtype=np.float64
    ).reshape(len(preds), len(class_names))
    for j, name in enumerate(class_names):
        columns[name] = pa.array(probs[:, j], pa.float64(), mask=mask)
    if has_ood:
        columns["in_distribution"] = pa.array([p.in_distribution if p else None for p in preds], pa.bool_())
        columns["ood_score"] = pa.array([p.ood_score if p else None for p in preds], pa.float64())
    columns["error"] = pa.array([None if r.ok else str(r.error) for r in results], pa.string())
    assert list(columns)[inputs.num_columns :] == output_columns(class_names, has_ood)
    return pa.table(columns)


@lru_cache(maxsize=1)
def kit_provenance() -> dict[str, str]:
    """The code that made a shard: galaxylib's version and the checkout's commit (once per process)."""
    import galaxylib
    from galaxylib.config import git_commit

    return {"galaxylib_version": galaxylib.__version__, "git_commit": git_commit() or "unknown"}
