"""Head mode: a frozen backbone's features computed once, then a head that trains in seconds.

A CPU user fine-tuning EfficientNet at 224 px gets ~13 images/s; the backbone's pooled
features of every image in each of its 8 orientations, computed once through LiteRT and
cached on disk, let the head train on thousands of examples per second instead. The head
is the model's own head layers (``head_on_features``), so after training the full model
(backbone + head) is ready to save, fine-tune or export.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from galaxylib.files import atomic_path
from galaxylib.modeling.layer_names import MORPHOLOGY, features_layer
from galaxylib.modeling.model import backbone_of, head_on_features
from galaxylib.modeling.orientation import VIEWS, orient
from galaxylib.modeling.scratch_cnn import is_fused
from galaxylib.modeling.training import TrainParams, class_weights, training_loss


def feature_views(start: str) -> tuple:
    """The views head mode computes for a start: all 8, or one for a backbone that is the same
    in every orientation: the morphology measurements, and a fused backbone (its CNN averages
    over the 8 views inside the graph)."""
    return VIEWS[:1] if start == MORPHOLOGY or is_fused(start) else VIEWS


def view_features(
    model,
    images: np.ndarray,
    cache_file: Path | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
    num_threads: int | None = None,
    views: tuple = VIEWS,
) -> np.ndarray:
    """Backbone features (V, N, F) of every image in each of ``views`` (all 8 by default),
    cached in ``cache_file`` and returned as a read-only memory map of it, so that head training
    reads them from disk a batch at a time (in memory only without a ``cache_file``). A backbone
    that ignores orientation needs only the first view."""
    if cache_file is not None and cache_file.is_file():
        cached = np.load(cache_file, mmap_mode="r")
        width = int(model.get_layer(features_layer(model)).output.shape[-1])
        if cached.shape == (len(views), len(images), width):
            return cached
    from ai_edge_litert.interpreter import Interpreter

    from galaxylib.inference.predictor import default_threads
    from galaxylib.modeling.export import export_tflite

    backbone = backbone_of(model)
    size = int(backbone.input_shape[1])
    with tempfile.TemporaryDirectory(prefix="galaxy-backbone-") as tmp:
        interpreter = Interpreter(
            model_path=str(export_tflite(backbone, Path(tmp) / "backbone.tflite", features=False)),
            num_threads=num_threads or default_threads(),
        )
    first, last = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    shape_out = (len(views), len(images), int(backbone.output_shape[-1]))
    with contextlib.ExitStack() as stack:
        if cache_file is None:
            out = np.zeros(shape_out, np.float32)
        else:  # written straight into the cache file: memory stays one batch whatever the dataset
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp_file = stack.enter_context(atomic_path(cache_file))
            out = np.lib.format.open_memmap(tmp_file, mode="w+", dtype=np.float32, shape=shape_out)
        _fill_features(interpreter, first, last, images, views, size, batch_size, out, show_progress)
        if cache_file is not None:
            out.flush()
            del out
    return np.load(cache_file, mmap_mode="r") if cache_file is not None else out


def _fill_features(
    interpreter,
    first: int,
    last: int,
    images: np.ndarray,
    views: tuple,
    size: int,
    batch_size: int,
    out: np.ndarray,
    show_progress: bool,
) -> None:
    from tqdm import tqdm

    shape = None
    with tqdm(
        total=len(views) * len(images),
        desc=f"Backbone features ({len(views)} view{'s' * (len(views) > 1)})",
        unit="img",
        disable=not show_progress,
    ) as bar:
        for start in range(0, len(images), batch_size):
            batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
            if shape != batch.shape:
                interpreter.resize_tensor_input(first, [len(batch), size, size, 3])
                interpreter.allocate_tensors()
                shape = batch.shape
            for v, view in enumerate(views):
                interpreter.set_tensor(first, np.ascontiguousarray(orient(batch, view)))
                interpreter.invoke()
                out[v, start : start + len(batch)] = interpreter.get_tensor(last)
                bar.update(len(batch))


def mean_over_views(features: np.ndarray, rows: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(len(rows), F): each row's features averaged over the views, like the export's second
    output; read ``chunk`` rows at a time from the (V, N, F) cache."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), features.shape[-1]), np.float32)
    for start in range(0, len(rows), chunk):
        part = np.sort(rows[start : start + chunk])
        order = np.searchsorted(part, rows[start : start + chunk])
        out[start : start + chunk] = np.asarray(features[:, part], dtype=np.float32).mean(axis=0)[order]
    return out


def train_head(
    model,
    features: np.ndarray,
    labels: np.ndarray,
    split,
    params: TrainParams,
    n_classes: int,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> dict[str, list[float]]:
    """Fit the model's head on cached (V, N, F) features of the train rows; select on the val rows.

    Every view of a training image is an example (the 8 orientations are the augmentation);
    ``balance`` weights or oversamples the rare classes as in full training.
    """
    result = fit_head(
        head_on_features(model), features, labels, split.train, split.val, params, n_classes, on_epoch=on_epoch
    )
    print(
        f"Head: {len(result.get('loss', []))} epochs on {len(split.train) * features.shape[0]:,} feature vectors "
        f"(best val loss {min(result.get('val_loss', [float('nan')])):.4f})."
    )
    return result


def fit_head(
    head,
    features: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray | None,
    params: TrainParams,
    n_classes: int,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> dict[str, list[float]]:
    """Fit a head (a Keras model on the features) on ``train_rows``; the weights of the epoch with
    the lowest loss on ``val_rows`` are kept (early stopping), or the last ones without ``val_rows``.

    Every view of a row is an example. The examples are read from ``features`` (the (V, N, F)
    cache, a memory map) a batch at a time, in a fresh order every epoch
    (``galaxylib.modeling.input_pipeline``), so memory does not grow with the dataset.

    Shared by ``train_head`` and the cross-validation in bench/cv_real_heads.py (which passes no
    ``val_rows``, so its held-out fold never picks an epoch): both fit heads the same way."""
    import keras

    from galaxylib.modeling.input_pipeline import batches_of, epoch_orders, feature_reader, rows_dataset, view_examples

    keras.utils.set_random_seed(params.seed)
    labels = np.asarray(labels, dtype=np.int64)
    views, n, width = features.shape
    batch, epochs = int(params.head_batch_size), int(params.head_epochs)
    train_examples = view_examples(train_rows, views, n)
    example_labels = np.tile(labels, views)  # the label of example v * N + r
    loss = training_loss(params, labels[train_rows], n_classes)
    weights = class_weights(labels[train_rows], n_classes) if params.balance == "class_weight" else None
    read = feature_reader(features, labels)

    def in_order(examples: np.ndarray):
        return lambda: (examples[i : i + batch] for i in range(0, len(examples), batch))

    norm = [layer for layer in head.layers if isinstance(layer, keras.layers.Normalization)]
    if norm:  # standardise the features with the train rows' statistics (part of the saved model)
        norm[0].adapt(rows_dataset(in_order(train_examples), read, (width,), np.float32).map(lambda x, y: x))
    steps = int(np.ceil(len(train_examples) / batch))
    schedule = keras.optimizers.schedules.CosineDecay(
        float(params.head_learning_rate), decay_steps=max(1, steps * epochs)
    )
    head.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=["accuracy"])
    train_ds = rows_dataset(
        lambda: batches_of(
            epoch_orders(train_examples, example_labels, epochs, params.seed, params.balance, n_classes), batch
        ),
        read,
        (width,),
        np.float32,
        class_weights=weights,
    )
    callbacks: list = []
    validation = None
    if val_rows is not None:
        validation = rows_dataset(in_order(view_examples(val_rows, views, n)), read, (width,), np.float32)
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=int(params.head_patience), restore_best_weights=True
            )
        )
    if on_epoch is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch(e, dict(logs or {}))))
    history = head.fit(
        train_ds,
        validation_data=validation,
        epochs=epochs,
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=0,
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}
