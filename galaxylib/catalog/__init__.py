"""Survey-scale catalogue inference: sharded, resumable, on one machine, Slurm arrays or Dask.

``predict_catalog`` (``galaxylib.catalog.run``) is the Python entry point and
``./predict.sh --catalog`` the command line; docs/catalog.md has the recipes. The package
runs on LiteRT through the one classify path and never imports TensorFlow.
"""

from galaxylib.catalog.sources import CatalogError

__all__ = ["CatalogError", "predict_catalog"]


def __getattr__(name: str):  # keep `import galaxylib.catalog` light: pyarrow and dask load on use
    if name == "predict_catalog":
        from galaxylib.catalog.run import predict_catalog

        return predict_catalog
    raise AttributeError(name)
