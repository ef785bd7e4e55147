"""``--to-database``: a shard's predictions into the ``predictions`` table, once per shard.

Each row comes from the one record builder (``galaxylib.store.records.prediction_row``, source
``catalog``), with the catalogue's ``id_str`` as its filename. A shard is loaded in one
transaction that first deletes the rows it would write (same source, model version and
ids), so loading it again after a resume leaves exactly one row per prediction. Rows are
keyed by ``id_str`` per model: keep ids unique across a catalogue (a survey's ids are).
Unreadable images get no row, as with predict.sh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from galaxylib.inference.classify import Classified
from galaxylib.store.database import PredictionStore
from galaxylib.store.records import prediction_row

SOURCE = "catalog"
_STORES: dict[str, PredictionStore] = {}  # one per database per process (a Dask worker loads many shards)


def store_for(url: str | None) -> PredictionStore:
    key = url or ""
    if key not in _STORES:
        _STORES[key] = PredictionStore(url)
    return _STORES[key]


def database_key(url: str | None) -> str:
    """How the manifest names a database: its URL without the password."""
    return store_for(url).url


def load_shard(
    store: PredictionStore, ids: Sequence[str], results: Sequence[Classified], model_version: str
) -> tuple[int, int]:
    """Replace this shard's catalogue rows for this model; returns (deleted, inserted)."""
    rows = [prediction_row(dataclasses.replace(item, name=str(i)), SOURCE) for i, item in zip(ids, results) if item.ok]
    return store.replace_many(rows, source=SOURCE, model_version=model_version, filenames=[str(i) for i in ids])
