"""Logging for every `coda` process: one JSON object per line (python-json-logger), quiet Kafka stacks."""

from __future__ import annotations

import logging
import logging.config
from typing import Any

NOISY = ("aiokafka", "faust", "mode", "kafka")  # chatty at INFO


def logging_config(level: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` dict (also handed to Faust's worker, which would set up its own)."""
    quiet = level if level == "DEBUG" else logging.getLevelName(max(logging.WARNING, logging.getLevelName(level)))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger", "process": "pid",
                              "message": "msg"},
        }},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {name: {"level": quiet} for name in NOISY},
    }


def configure(level: str) -> None:
    logging.config.dictConfig(logging_config(level))
