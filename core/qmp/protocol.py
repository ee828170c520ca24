"""QMP, one connection's worth: greeting, capabilities negotiation, request checking, replies.

Transport-free on purpose: :class:`QmpSession` takes bytes and returns wire lines, so the
protocol is tested without sockets and the server only moves bytes. The behaviour is QEMU
7.2's (docs/interop/qmp-spec.rst, monitor/qmp.c, qapi/qmp-dispatch.c):

* on connect the server sends ``{"QMP": {"version": ..., "capabilities": []}}`` (no ``oob``);
* until ``qmp_capabilities`` succeeds only that command exists; any other name is a
  ``CommandNotFound`` whose text QEMU replaces with "Expecting capabilities negotiation with
  'qmp_capabilities'";
* a request must be an object with a string ``execute``, an object ``arguments`` and any
  ``id``; each violation has its own QEMU message, and the reply echoes ``id`` when the
  request was an object that had one (parse errors never carry an ``id``);
* a reply is ``{"return": ...}`` (``{}`` for commands without a result) or
  ``{"error": {"class": ..., "desc": ...}}``, one line ending in CR LF.
"""
from __future__ import annotations

from typing import Any, Iterator

from ..log import get_logger
from .commands import COMMANDS, NEGOTIATION_COMMANDS, OFFERED_CAPABILITIES, check_arguments, version_info
from .control import MachineControl
from .errors import COMMAND_NOT_FOUND, GENERIC_ERROR, QmpError
from .qjson import DEFAULT_MAX_MESSAGE, JsonError, JsonStream, qdict_order, to_line

log = get_logger("microvm.qmp")

NEGOTIATION_DESC = "Expecting capabilities negotiation with 'qmp_capabilities'"


def greeting() -> dict[str, Any]:
    return {"QMP": {"version": version_info(), "capabilities": list(OFFERED_CAPABILITIES)}}


def error_response(desc: str, error_class: str = GENERIC_ERROR) -> dict[str, Any]:
    return {"error": {"class": error_class, "desc": desc}}


def _check_request(req: dict[str, Any]) -> str:
    """qmp_dispatch_check_obj: the command name, or QmpError. Members are examined in QDict
    order, so with several faults the one QEMU reports is the one reported here."""
    for key in qdict_order(req):
        value = req[key]
        if key == "execute":
            if type(value) is not str:
                raise QmpError("QMP input member 'execute' must be a string")
        elif key == "arguments":
            if type(value) is not dict:
                raise QmpError("QMP input member 'arguments' must be an object")
        elif key != "id":  # exec-oob too: without the oob capability it is just unexpected
            raise QmpError(f"QMP input member '{key}' is unexpected")
    if "execute" not in req:
        raise QmpError("QMP input lacks member 'execute'")
    return req["execute"]


class QmpSession:
    """The protocol state of one client connection."""

    def __init__(self, control: MachineControl, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.control = control
        self.stream = JsonStream(max_message)
        self.negotiated = False
        #: set when the input stream hit a limit: the connection must be closed
        self.fatal = False

    def greeting_line(self) -> bytes:
        return to_line(greeting())

    @property
    def pending_input(self) -> bool:
        """Input kept for later by a ``limit`` (see :meth:`receive`)."""
        return self.stream.pending

    def receive(self, data: bytes, limit: int | None = None) -> Iterator[bytes]:
        """Feed bytes from the client; yields the reply lines, in order. With ``limit``, at
        most that many requests (or errors) are handled; the rest of the input waits for the
        next call (``receive(b"", limit)``) while :attr:`pending_input` is true.

        Lazy on purpose: each request is executed only when the previous reply has been
        taken, so an event a command emits lands between its predecessor's reply and its
        own, as on QEMU's wire.
        """
        for item in self.stream.feed(data, limit):
            if isinstance(item, JsonError):
                yield to_line(error_response(item.desc))
                if item.fatal:
                    self.fatal = True
                    return
            else:
                yield to_line(self.dispatch(item))

    def dispatch(self, req: Any) -> dict[str, Any]:
        """One parsed request to one response object."""
        has_id = isinstance(req, dict) and "id" in req
        try:
            if not isinstance(req, dict):
                raise QmpError("QMP input must be a JSON object")
            rsp = {"return": self._execute(req)}
        except QmpError as e:
            desc = e.desc
            if not self.negotiated and e.error_class == COMMAND_NOT_FOUND:
                desc = NEGOTIATION_DESC  # monitor_qmp_dispatch's "more useful error message"
            rsp = error_response(desc, e.error_class)
        except Exception as e:  # a machine-side bug must not take the monitor down
            log.exception("QMP command %r failed", req.get("execute") if isinstance(req, dict) else req)
            rsp = error_response(f"internal error: {e}")
        if has_id:
            rsp["id"] = req["id"]
        return rsp

    def _execute(self, req: dict[str, Any]) -> Any:
        name = _check_request(req)
        table = COMMANDS if self.negotiated else NEGOTIATION_COMMANDS
        cmd = table.get(name)
        if cmd is None:
            raise QmpError(f"The command {name} has not been found", COMMAND_NOT_FOUND)
        args = req.get("arguments", {})
        check_arguments(cmd.args, args)
        result = cmd.handler(self, args)
        return {} if result is None else result
