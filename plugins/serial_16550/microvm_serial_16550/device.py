"""A PC16550D UART (the "16550A") as a PC wires it at COM1.

Register and bit names are those of the National Semiconductor PC16550D datasheet (June
1995), section 8. Where the datasheet leaves a choice open, the model follows QEMU's
``hw/char/serial.c`` and what Linux's ``drivers/tty/serial/8250/8250_port.c`` probes for.

Choices a reader should know about:

* **Transmission is instantaneous.** A THR byte goes to ``out`` during the guest's write, so
  THRE and TEMT always read 1 and the THRE interrupt comes back as soon as the write is done.
  As in QEMU, the write first drops the THRE interrupt and then raises it again, so each THR
  write makes a fresh edge for an edge-triggered ISA IRQ.
* **The receiver is fed from a host-side queue.** :meth:`Serial16550.receive` (the chardev's
  thread) appends to a bounded queue that tops up the 16-byte RX FIFO (1 byte in 16450 mode)
  whenever the guest takes a byte out. The chardev asks :meth:`Serial16550.input_room` first
  and never hands over more than fits (QEMU's ``can_read``); ``on_input_room`` is called when
  the guest made room again, so the chardev reads on. A caller that ignores ``input_room``
  blocks in ``receive`` until the guest reads. Either way input pushes back on the host fd
  instead of being lost. Host input never overruns the FIFO, so OE is only ever seen in
  loopback, where THR bytes enter the receiver directly as the datasheet describes.
* **Character timeout is immediate.** A real 16550 signals a character timeout (IIR 0x0C) when
  the FIFO holds data below the trigger level and nothing arrived for 4 character times; here
  it is signalled as soon as the FIFO holds data below the trigger level. Because the FIFO is
  always topped up from the host queue, "below the trigger" already means "no more input is
  coming", so the guest sees the same sequence without a timer.
* **OUT2 gates INTR.** On a PC the UART's INTR pin reaches the interrupt controller through a
  buffer enabled by the OUT2 pin. The line is therefore driven only while MCR.OUT2 is set and
  loopback is off (in loopback the datasheet forces the modem output pins inactive).
* **The modem lines of the host side** are CTS, DSR and DCD asserted, RI not (as QEMU), so MSR
  reads 0xB0 after reset.

Every entry point takes one lock, so vCPU threads and the input thread may call in at once.
``out`` and ``irq.set_level`` are called while it is held, which keeps output bytes and level
changes in order; they must not call back into the device.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterable

from microvm.api import EventLog, IrqLine, get_logger

log = get_logger("microvm.serial_16550")
#: a failing host output fails for every byte: logged once, then summarised
output_error = EventLog(log)

# Register offsets (datasheet table II); DLAB is LCR bit 7.
RBR = THR = DLL = 0  # Receiver Buffer (read) / Transmitter Holding (write); Divisor Latch LS
IER = DLM = 1        # Interrupt Enable; Divisor Latch MS
IIR = FCR = 2        # Interrupt Ident (read) / FIFO Control (write)
LCR = 3              # Line Control
MCR = 4              # MODEM Control
LSR = 5              # Line Status
MSR = 6              # MODEM Status
SCR = 7              # Scratch
REGISTER_COUNT = 8

# IER
IER_ERBFI = 0x01     # Enable Received Data Available Interrupt (and character timeout)
IER_ETBEI = 0x02     # Enable Transmitter Holding Register Empty Interrupt
IER_ELSI = 0x04      # Enable Receiver Line Status Interrupt
IER_EDSSI = 0x08     # Enable MODEM Status Interrupt
IER_MASK = 0x0F      # bits 4-7 are always 0

# IIR (table IV), highest priority first
IIR_NO_INT = 0x01    # bit 0 is 0 while an interrupt is pending
IIR_RLS = 0x06       # Receiver Line Status: OE, PE, FE or BI; cleared by reading LSR
IIR_RDA = 0x04       # Received Data Available at the trigger level; cleared below it
IIR_CTI = 0x0C       # Character Timeout; cleared by reading RBR
IIR_THRE = 0x02      # THR Empty; cleared by reading IIR (when it is the source) or writing THR
IIR_MSI = 0x00       # MODEM Status; cleared by reading MSR
IIR_FIFOS_ENABLED = 0xC0

# FCR
FCR_FIFO_ENABLE = 0x01
FCR_RCVR_RESET = 0x02
FCR_XMIT_RESET = 0x04
FCR_DMA_MODE = 0x08  # only changes the RXRDY/TXRDY pins, which a VM does not have
FCR_TRIGGER = 0xC0   # RCVR trigger: 00=1, 01=4, 10=8, 11=14 bytes
TRIGGER_LEVELS = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}

# LCR
LCR_WLS = 0x03       # word length 5-8 bits
LCR_DLAB = 0x80      # Divisor Latch Access Bit

# MCR
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08      # on a PC: enables the INTR buffer to the IRQ line
MCR_LOOP = 0x10
MCR_MASK = 0x1F      # bits 5-7 are always 0

# LSR
LSR_DR = 0x01        # Data Ready
LSR_OE = 0x02        # Overrun Error
LSR_PE = 0x04        # Parity Error (never: the host side has no framing)
LSR_FE = 0x08        # Framing Error (never)
LSR_BI = 0x10        # Break Interrupt
LSR_THRE = 0x20      # Transmitter Holding Register Empty
LSR_TEMT = 0x40      # Transmitter Empty
LSR_RCVR_FIFO_ERROR = 0x80  # FIFO mode: a PE, FE or BI character is in the FIFO
LSR_LINE_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI  # sources of the RLS interrupt

# MSR
MSR_DCTS = 0x01      # Delta Clear To Send
MSR_DDSR = 0x02      # Delta Data Set Ready
MSR_TERI = 0x04      # Trailing Edge Ring Indicator
MSR_DDCD = 0x08      # Delta Data Carrier Detect
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
HOST_MODEM_LINES = MSR_CTS | MSR_DSR | MSR_DCD

FIFO_SIZE = 16
DEFAULT_DIVISOR = 0x0C  # 9600 baud from the PC's 1.8432 MHz clock, as QEMU resets it
HOST_QUEUE_SIZE = 64 * 1024

_BREAK = 0x100  # flag on an RX entry (and the host-queue marker): a break, received as a 0 byte


class Serial16550:
    """The UART's eight registers. The bus calls :meth:`read`/:meth:`write` with the offset
    inside the 8-port range; the chardev calls :meth:`receive` and :meth:`send_break`."""

    def __init__(
        self, irq: IrqLine, out: Callable[[bytes], None], host_queue_size: int = HOST_QUEUE_SIZE,
        on_input_room: Callable[[], None] | None = None,
    ) -> None:
        self._irq = irq
        self._out = out
        #: called (lock held) when the guest took input and the host queue has room again
        self.on_input_room = on_input_room
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # host queue has room again
        self._host: deque[int] = deque()  # bytes (and _BREAK) not yet in the RX FIFO
        self._host_limit = max(1, host_queue_size)
        self._closed = False
        self._level = False
        self._ier = 0
        self._fcr = 0
        self._lcr = 0
        self._mcr = 0
        self._scr = 0
        self._dll = DEFAULT_DIVISOR
        self._dlm = 0
        self._rx: deque[int] = deque()  # RX FIFO (or the 16450-mode RBR): byte | _BREAK
        self._line_errors = 0           # LSR OE and BI: sticky until LSR is read
        self._fifo_error = False        # LSR bit 7: sticky until LSR is read and no error remains
        self._thr_ipending = False      # the THRE interrupt, armed and cleared as in QEMU
        self._msr_delta = 0             # MSR bits 0-3, cleared by reading MSR

    # ---- bus side --------------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        """Read ``len(data)`` registers from ``offset`` on; each byte is its own access."""
        with self._lock:
            for i in range(len(data)):
                data[i] = self._read_register(offset + i)
                self._update()

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` to the registers from ``offset`` on; each byte is its own access."""
        with self._lock:
            for i, value in enumerate(bytes(data)):
                self._write_register(offset + i, value)
                self._update()

    # ---- host side ---------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Bytes from the host (the chardev's reader thread). Blocks while the host queue is
        full, so a slow guest slows the host down instead of losing input."""
        self._enqueue(bytes(data))

    def input_room(self) -> int:
        """How many bytes :meth:`receive` takes now without waiting (QEMU's ``can_read``)."""
        with self._lock:
            return 0 if self._closed else max(0, self._host_limit - len(self._host))

    def send_break(self) -> None:
        """A break on the line: a 0 byte with LSR.BI, in order with the bytes around it
        (Linux takes a break followed by a key as Magic SysRq)."""
        self._enqueue((_BREAK,))

    def close(self) -> None:
        """Stop taking input: wakes a :meth:`receive` blocked on a full queue, which drops the
        rest. Called when the machine stops so the chardev's reader thread can end."""
        with self._lock:
            self._closed = True
            self._space.notify_all()

    def registers(self) -> dict[str, int]:
        """A side-effect-free view of the register file (for tests and debugging)."""
        with self._lock:
            return {
                "IER": self._ier,
                "IIR": self._iir(),
                "FCR": self._fcr,
                "LCR": self._lcr,
                "MCR": self._mcr,
                "LSR": self._lsr(),
                "MSR": self._modem_lines() | self._msr_delta,
                "SCR": self._scr,
                "DLL": self._dll,
                "DLM": self._dlm,
                "rx_fifo": len(self._rx),
                "host_queue": len(self._host),
                "irq": int(self._level),
            }

    # ---- registers ---------------------------------------------------------------------------
    def _read_register(self, offset: int) -> int:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR:
            return self._dll if dlab else self._read_rbr()
        if offset == IER:
            return self._dlm if dlab else self._ier
        if offset == IIR:
            iir = self._iir()
            if iir & 0x0F == IIR_THRE:  # reading IIR acknowledges THRE when it is the source
                self._thr_ipending = False
            return iir
        if offset == LCR:
            return self._lcr
        if offset == MCR:
            return self._mcr
        if offset == LSR:
            value = self._lsr()
            self._line_errors = 0
            self._fifo_error = any(entry & _BREAK for entry in self._rx)
            return value
        if offset == MSR:
            value = self._modem_lines() | self._msr_delta
            self._msr_delta = 0
            return value
        if offset == SCR:
            return self._scr
        log.debug("16550: read of register %d outside the 8-port range", offset)
        return 0xFF

    def _write_register(self, offset: int, value: int) -> None:
        dlab = self._lcr & LCR_DLAB
        if offset == THR:
            if dlab:
                self._dll = value
            else:
                self._transmit(value)
        elif offset == IER:
            if dlab:
                self._dlm = value
            else:
                self._write_ier(value)
        elif offset == FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self._lcr = value  # LCR bit 6 (Set Break) is not looped back: no framing here
        elif offset == MCR:
            self._write_mcr(value)
        elif offset == SCR:
            self._scr = value
        else:  # LSR and MSR writes are factory-test only on the PC16550D; out of range too
            log.debug("16550: write of %#x to read-only register %d ignored", value, offset)

    def _read_rbr(self) -> int:
        if not self._rx:
            return 0
        value = self._rx.popleft() & 0xFF
        if self._rx and self._rx[0] & _BREAK:  # BI shows when its character reaches the top
            self._line_errors |= LSR_BI
        return value

    def _transmit(self, value: int) -> None:
        self._thr_ipending = False
        self._update()  # THRE drops for the write, so the re-raise below is a fresh edge
        if self._mcr & MCR_LOOP:  # SOUT is held marking; the byte comes back in at LCR's
            self._push_rx(value & ((1 << (5 + (self._lcr & LCR_WLS))) - 1))  # word length
        else:
            try:
                self._out(bytes((value,)))
            except Exception:  # a broken host output must not kill the vCPU
                output_error("16550: output failed", 30, "16550: output failed, byte dropped", exc_info=True)
        self._thr_ipending = True  # sent at once: THR and the shift register are empty again

    def _write_ier(self, value: int) -> None:
        value &= IER_MASK
        changed = self._ier ^ value
        self._ier = value
        if changed & IER_ETBEI:
            # Turning ETBEI on re-arms THRE even if IIR acknowledged it (QEMU, Bochs; Linux's
            # UART_BUG_THRE and TXEN probes rely on it); turning it off disarms it.
            self._thr_ipending = bool(value & IER_ETBEI)

    def _write_fcr(self, value: int) -> None:
        enable = value & FCR_FIFO_ENABLE
        if enable != self._fcr & FCR_FIFO_ENABLE:
            value |= FCR_RCVR_RESET | FCR_XMIT_RESET  # changing FCR0 clears both FIFOs
        elif not enable:
            return  # "FCR0 must be a 1 when other FCR bits are written to"
        if value & FCR_RCVR_RESET:
            self._rx.clear()
            self._fifo_error = False
            self._line_errors &= ~LSR_BI
        if value & FCR_XMIT_RESET:
            self._thr_ipending = True  # an empty XMIT FIFO is THR empty (as QEMU)
        self._fcr = value & (FCR_FIFO_ENABLE | FCR_DMA_MODE | FCR_TRIGGER) if enable else 0

    def _write_mcr(self, value: int) -> None:
        before = self._modem_lines()
        self._mcr = value & MCR_MASK
        after = self._modem_lines()
        changed = before ^ after
        if changed & MSR_CTS:
            self._msr_delta |= MSR_DCTS
        if changed & MSR_DSR:
            self._msr_delta |= MSR_DDSR
        if before & MSR_RI and not after & MSR_RI:
            self._msr_delta |= MSR_TERI
        if changed & MSR_DCD:
            self._msr_delta |= MSR_DDCD

    # ---- derived state -----------------------------------------------------------------------
    def _modem_lines(self) -> int:
        """MSR bits 4-7: the host's lines, or in loopback MCR's outputs wired back in."""
        mcr = self._mcr
        if not mcr & MCR_LOOP:
            return HOST_MODEM_LINES
        return (
            (MSR_CTS if mcr & MCR_RTS else 0)
            | (MSR_DSR if mcr & MCR_DTR else 0)
            | (MSR_RI if mcr & MCR_OUT1 else 0)
            | (MSR_DCD if mcr & MCR_OUT2 else 0)
        )

    def _fifo_mode(self) -> bool:
        return bool(self._fcr & FCR_FIFO_ENABLE)

    def _lsr(self) -> int:
        value = LSR_THRE | LSR_TEMT | self._line_errors
        if self._rx:
            value |= LSR_DR
        if self._fifo_error and self._fifo_mode():
            value |= LSR_RCVR_FIFO_ERROR
        return value

    def _iir(self) -> int:
        """The highest-priority pending interrupt (datasheet table IV) and the FIFO bits."""
        ier = self._ier
        if ier & IER_ELSI and self._line_errors & LSR_LINE_ERRORS:
            ident = IIR_RLS
        elif ier & IER_ERBFI and self._rx:
            below = self._fifo_mode() and len(self._rx) < TRIGGER_LEVELS[self._fcr & FCR_TRIGGER]
            ident = IIR_CTI if below else IIR_RDA
        elif ier & IER_ETBEI and self._thr_ipending:
            ident = IIR_THRE
        elif ier & IER_EDSSI and self._msr_delta:
            ident = IIR_MSI
        else:
            ident = IIR_NO_INT
        return ident | (IIR_FIFOS_ENABLED if self._fifo_mode() else 0)

    # ---- receiver and interrupt plumbing (lock held) -----------------------------------------
    def _push_rx(self, entry: int) -> None:
        """A character completes in the receiver shift register. Host bytes are taken as
        they are, whatever LCR's word length: the host side has no framing (as QEMU)."""
        depth = FIFO_SIZE if self._fifo_mode() else 1
        if len(self._rx) >= depth:
            self._line_errors |= LSR_OE
            if depth > 1:
                return  # FIFO overrun: the new character is lost, the FIFO kept
            self._rx.clear()  # 16450 mode: the new character overwrites RBR
        self._rx.append(entry)
        if entry & _BREAK:
            self._fifo_error = True
            if len(self._rx) == 1:
                self._line_errors |= LSR_BI

    def _refill(self) -> None:
        """Top the RX FIFO up from the host queue (SIN is disconnected in loopback)."""
        if self._mcr & MCR_LOOP or not self._host:
            return
        depth = FIFO_SIZE if self._fifo_mode() else 1
        moved = False
        while self._host and len(self._rx) < depth:
            self._push_rx(self._host.popleft())
            moved = True
        if moved:
            self._space.notify_all()
            if self.on_input_room is not None:
                self.on_input_room()

    def _update(self) -> None:
        """Re-evaluate after any change: refill, then drive INTR through the OUT2 gate."""
        self._refill()
        gate_open = (self._mcr & (MCR_OUT2 | MCR_LOOP)) == MCR_OUT2
        level = gate_open and not (self._iir() & IIR_NO_INT)
        if level != self._level:
            self._level = level
            self._irq.set_level(level)

    def _enqueue(self, entries: Iterable[int]) -> None:
        pending = list(entries)
        with self._lock:
            while pending and not self._closed:
                room = self._host_limit - len(self._host)
                if room <= 0:
                    self._space.wait()
                    continue
                self._host.extend(pending[:room])
                del pending[:room]
                self._update()
            if pending:
                log.debug("16550: closed, %d input bytes dropped", len(pending))
