"""The experiment store: run tracking (`Tracker`) and the model registry (`Registry`) on one SQLAlchemy database.

    store = open_store("sqlite:///outputs/dialsum.db")      # or postgresql+psycopg://user:pass@host/db
    Tracker(store).create_run(...); Registry(store).register(...)
"""
from engine.store.version_metadata import extract_checkpoint_metadata
from engine.store.db import SCHEMA_VERSION, Store, open_store, resolve_store_uri, store_uri
from engine.redact import redact
from engine.store.registry import Registry, parse_model_ref
from engine.store.tracker import Tracker

__all__ = ["SCHEMA_VERSION", "Registry", "Store", "Tracker", "extract_checkpoint_metadata", "open_store",
           "parse_model_ref", "redact", "resolve_store_uri", "store_uri"]
