"""A logger that costs nothing until a message is due.

``import logging`` pulls in ``re``, ``traceback``, ``enum`` and ``string``: about a tenth of
microvm's whole start-up budget. Core modules therefore log through :func:`get_logger`,
which forwards to the standard :mod:`logging` logger of the same name as soon as logging is
imported by anyone (tests' caplog, an embedding program, ``-v``), and before that imports
it only for a message at or above the CLI's threshold (WARNING unless ``-v``).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
#: messages below this level are dropped while logging is not imported
_threshold = WARNING
#: called once with the logging module when it is first needed (the CLI's format)
_configure: Callable[[Any], None] | None = None


def set_threshold(level: int, configure: Callable[[Any], None] | None = None) -> None:
    global _threshold, _configure
    _threshold = level
    _configure = configure
    if "logging" in sys.modules or level < WARNING:
        _real_logging()


def _real_logging() -> Any:
    global _configure
    import logging

    if _configure is not None:
        configure, _configure = _configure, None
        configure(logging)
    return logging


class Logger:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _logger(self, level: int) -> Any:
        if "logging" in sys.modules:
            return _real_logging().getLogger(self.name)
        if level >= _threshold:
            return _real_logging().getLogger(self.name)
        return None

    def log(self, level: int, msg: str, *args: Any, **kw: Any) -> None:
        lg = self._logger(level)
        if lg is not None:
            kw.setdefault("stacklevel", 2)
            lg.log(level, msg, *args, **kw)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        if "logging" in sys.modules or DEBUG >= _threshold:
            self.log(DEBUG, msg, *args, stacklevel=3, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(INFO, msg, *args, stacklevel=3, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(WARNING, msg, *args, stacklevel=3, **kw)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self.log(ERROR, msg, *args, stacklevel=3, **kw)

    def exception(self, msg: str, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self.log(ERROR, msg, *args, stacklevel=3, **kw)

    def isEnabledFor(self, level: int) -> bool:
        lg = self._logger(level)
        return lg is not None and lg.isEnabledFor(level)


def get_logger(name: str) -> Logger:
    return Logger(name)
