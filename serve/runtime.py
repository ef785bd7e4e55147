"""What one worker holds for its lifetime: settings, the loaded model, the database."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from galaxylib.inference.predictor import Predictor
from serve.errors import ApiError
from serve.model_loader import ModelState
from serve.settings import Settings
from serve.storage import Database


@dataclass
class Runtime:
    settings: Settings
    model: ModelState
    db: Database

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The served model's class table (None while no model is loaded)."""
        return self.model.predictor.class_names if self.model.predictor is not None else None

    def require_model(self) -> Predictor:
        if self.model.predictor is None:
            raise ApiError(
                503,
                "model_unavailable",
                "no model is loaded on this server; the operator must fix MODEL_PATH/MODEL_URL "
                "(see the server log) and restart",
                headers={"Retry-After": "30"},
            )
        return self.model.predictor


def runtime() -> Runtime:
    return current_app.extensions["galaxy"]
