"""Classifier zoo: one registry (:func:`create_model`), one file per model family."""

from cxr.models.registry import ModelError, create_model, list_models, register_model

__all__ = ["ModelError", "create_model", "list_models", "register_model"]
