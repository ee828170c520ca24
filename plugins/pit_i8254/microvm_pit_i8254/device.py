"""An Intel 8254 Programmable Interval Timer as a PC wires it, plus port 0x61.

Register, command and mode names are those of the Intel 8254 datasheet (order 231164-005):
three 16-bit counters clocked at 1.193182 MHz, a write-only Control Word Register, the Counter
Latch and Read-Back commands, access modes LSB / MSB / LSB-then-MSB and modes 0-5. On a PC
counter 0's OUT drives ISA IRQ 0, counter 1 used to time DRAM refresh, and counter 2's GATE and
OUT are wired to the "NMI status and control" port 0x61 together with the speaker enable.

Choices a reader should know about:

* **The counters follow the injected clock, not guest accesses.** Elapsed CLK pulses are
  ``clock() * 1193182 // 10**9`` minus the pulse at which counting started, so a guest polling
  OUT2 through port 0x61 (Linux calibrates the TSC that way) sees it go high after the real
  time has passed, however few or many exits that took. All arithmetic is in whole CLK pulses,
  so a fake clock gives exact, repeatable counts.
* **A count is loaded when it is written.** The datasheet loads the Count Register into the
  Counting Element on the CLK pulse after the write; as in QEMU the model starts counting at
  the write itself (one 838 ns pulse earlier). A new count written while a mode 2 or 3 counter
  runs also takes effect at once instead of at the end of the current period; in modes 1 and 5
  it waits for the next GATE trigger as the datasheet says.
* **IRQ 0 is pulsed once per rising edge of OUT0 produced by counting** (mode 0 and 1: at
  terminal count; 2 and 3: at every reload; 4 and 5: after the one-clock strobe). The 8259 and
  the IOAPIC see ISA IRQ 0 as edge triggered, so a pulse is what they latch. The device starts
  no thread: the machine's timer thread asks :meth:`I8254.next_deadline` and calls
  :meth:`I8254.tick`. If it is late, the edges it missed are coalesced into one pulse (the
  count of coalesced edges is kept in ``I8254.irq0_coalesced``). Edges caused by programming
  alone (a control word putting OUT high) raise no interrupt.
* **GATE** of counters 0 and 1 is tied high; counter 2's comes from port 0x61 bit 0 (and
  is low from the moment a :class:`Port61` is attached, as port 0x61 resets to 0).
  :meth:`I8254.set_gate` implements the datasheet's gate table for every mode.
* **NULL COUNT** (read-back status bit 6) is 1 from a control word or count write until the
  count is in the Counting Element, i.e. until counting starts (immediately in modes 0 and 2-4
  with GATE high, at the GATE trigger in modes 1 and 5).
* **The Control Word Register reads as 0** (it is write-only; QEMU returns 0 too).

Every entry point takes one lock, so vCPU threads and the timer thread may call in at once.
``irq.pulse`` is called while the lock is held, and must not call back into this device. The
optional ``on_timer_change`` callback is called *after* the lock is released whenever a guest
access may have moved :meth:`I8254.next_deadline`, so the timer thread can re-arm.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from microvm.api import IrqLine, get_logger

log = get_logger("microvm.pit_i8254")

PIT_HZ = 1_193_182          # CLK input of every counter on a PC (14.31818 MHz / 12)
NS_PER_S = 1_000_000_000

# Port offsets from the 8254's base (0x40 on a PC): A1 A0.
COUNTER0 = 0
COUNTER1 = 1
COUNTER2 = 2
CONTROL = 3
REGISTER_COUNT = 4

# Control Word Format (datasheet figure 7).
CW_SC = 0xC0                # Select Counter: 00, 01, 10 = counter 0-2; 11 = Read-Back command
CW_RW = 0x30                # Read/Write: 00 = Counter Latch command, 01 LSB, 10 MSB, 11 LSB then MSB
CW_M = 0x0E                 # Mode M2 M1 M0 (x10 = mode 2, x11 = mode 3)
CW_BCD = 0x01               # 1 = binary coded decimal counter (4 decades)
SC_READ_BACK = 3

RW_LATCH = 0
RW_LSB = 1
RW_MSB = 2
RW_LSB_MSB = 3

# Read-Back command (datasheet figure 9): bit 5 COUNT# and bit 4 STATUS# are active low,
# bits 3-1 select counters 2, 1, 0.
RB_COUNT_N = 0x20
RB_STATUS_N = 0x10
RB_CNT2 = 0x08
RB_CNT1 = 0x04
RB_CNT0 = 0x02

# Status byte (datasheet figure 10).
STATUS_OUTPUT = 0x80
STATUS_NULL_COUNT = 0x40

# Port 0x61 (IBM PC/AT "port B", kept as the bits Linux and firmware use).
PORT61_GATE2 = 0x01         # timer 2 gate (R/W)
PORT61_SPKR_DATA = 0x02     # speaker data enable (R/W)
PORT61_RW_MASK = 0x0F       # bits 2-3 (parity / channel check enable) are plain R/W bits
PORT61_REFRESH = 0x10       # refresh request toggle (RO): flips every 15.085 us
PORT61_OUT2 = 0x20          # timer 2 output (RO)
REFRESH_HALF_PERIOD_NS = 15_085  # counter 1 at its BIOS count of 18: 18 / 1.193182 MHz

# Channel states.
_IDLE = 0          # control word written, count not (completely) written: counting stopped
_WAIT_TRIGGER = 1  # modes 1 and 5: count written, waiting for a GATE rising edge
_RUNNING = 2
_PAUSED = 3        # GATE low in a mode where that suspends counting (0, 2, 3, 4)


def ticks_at(ns: int) -> int:
    """Whole CLK pulses that have happened by ``ns`` on the clock (floor)."""
    return ns * PIT_HZ // NS_PER_S


def ns_of_tick(tick: int) -> int:
    """The first clock value at which ``tick`` pulses have happened (ceil), the inverse of
    :func:`ticks_at`."""
    return -((-tick * NS_PER_S) // PIT_HZ)


def _bcd_encode(value: int) -> int:
    value %= 10000
    return (value // 1000) << 12 | (value // 100 % 10) << 8 | (value // 10 % 10) << 4 | value % 10


def _bcd_decode(raw: int) -> int:
    """A 4-decade BCD count; invalid digits (A-F) just weigh as 10-15, as a decade counter
    preloaded with them would count down from there. Never raises."""
    return ((raw >> 12) & 0xF) * 1000 + ((raw >> 8) & 0xF) * 100 + ((raw >> 4) & 0xF) * 10 + (raw & 0xF)


class _Counter:
    """One counter's registers and state. Not locked: :class:`I8254` holds the lock."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.mode = 0            # effective mode 0-5
        self.mode_bits = 0       # M2-M0 as programmed (6 and 7 alias 2 and 3), for the status byte
        self.rw = RW_LSB_MSB
        self.bcd = False
        self.cr = 0              # Count Register as last written (raw, BCD-coded when bcd)
        self.cr_lsb = 0          # LSB of a LSB-then-MSB write in progress
        self.n = 0x10000         # initial count the Counting Element is using, in pulses
        self.state = _IDLE
        self.start = 0           # tick at which counting (of this load) started
        self.paused_d = 0        # pulses counted before a GATE pause
        self.hold = 0            # Counting Element value shown while not counting
        self.gate = True
        self.null_count = True
        self.write_msb_next = False
        self.read_msb_next = False
        self.latch: list[int] = []      # latched count bytes still to be read
        self.status_latch: int | None = None
        self.irq_checked = 0     # elapsed pulses up to which OUT edges were reported
        self.pending_n: int | None = None  # modes 1/5: count written during a one-shot
        # A counter is "in a known initial state" after reset only once programmed; a PC's
        # BIOS programs counter 0 to mode 3. Until then OUT is low as for mode 0.
        self.out_idle = False

    # --- the counting element -------------------------------------------------------------
    def modulus(self) -> int:
        return 10000 if self.bcd else 0x10000

    def initial_count(self, raw: int) -> int:
        """The number of pulses a written count means: 0 is the maximum (2^16 or 10^4)."""
        n = _bcd_decode(raw) if self.bcd else raw & 0xFFFF
        return n if n else self.modulus()

    def elapsed(self, now_tick: int) -> int | None:
        """Pulses counted since this load started, or None when no count is loaded."""
        if self.state == _RUNNING:
            return max(now_tick - self.start, 0)
        if self.state == _PAUSED:
            return self.paused_d
        return None

    def ce_value(self, now_tick: int) -> int:
        """The Counting Element as a binary number (0 stands for the maximum count)."""
        d = self.elapsed(now_tick)
        n, m = self.n, self.modulus()
        if self.state == _WAIT_TRIGGER:
            return n % m       # loaded, waiting for the GATE trigger
        if d is None:
            return self.hold
        if self.mode in (0, 1, 4, 5):
            v = n - d
        elif self.mode == 2:
            v = n - d % n
        else:
            # Mode 3 decrements by two; an odd count loads N-1 and OUT stays high one count
            # longer ((N+1)/2 pulses high, (N-1)/2 low), as figure 15's notes describe.
            p = d % n
            half_high = (n + 1) // 2
            q = p if p < half_high else p - half_high
            v = (n - 2 * q) & ~1
        return v % m

    def out(self, now_tick: int) -> bool:
        """The OUT pin (datasheet figures 12-17)."""
        if self.state == _IDLE:
            return self.out_idle
        if self.state == _WAIT_TRIGGER:
            return True
        if self.state == _PAUSED and self.mode in (2, 3):
            return True   # GATE low forces OUT high in modes 2 and 3
        d = self.elapsed(now_tick) or 0
        n = self.n
        if self.mode == 0 or self.mode == 1:
            return d >= n
        if self.mode == 2:
            return n == 1 or d % n != n - 1
        if self.mode == 3:
            return d % n < (n + 1) // 2
        return d != n   # modes 4 and 5: a one-pulse low strobe at terminal count

    def next_rising_edge(self, d: int) -> int | None:
        """The smallest elapsed count > ``d`` at which OUT rises through counting."""
        if self.state != _RUNNING:
            return None
        n = self.n
        if self.mode in (0, 1):
            return n if n > d else None
        if self.mode in (4, 5):
            return n + 1 if n + 1 > d else None
        return (d // n + 1) * n  # modes 2 and 3: OUT rises at every reload

    def status(self, now_tick: int) -> int:
        return (
            (STATUS_OUTPUT if self.out(now_tick) else 0)
            | (STATUS_NULL_COUNT if self.null_count else 0)
            | self.rw << 4
            | self.mode_bits << 1
            | (1 if self.bcd else 0)
        )

    def encoded_ce(self, now_tick: int) -> int:
        v = self.ce_value(now_tick)
        return _bcd_encode(v) if self.bcd else v & 0xFFFF

    # --- state changes --------------------------------------------------------------------
    def stop(self, now_tick: int, out_idle: bool) -> None:
        self.hold = self.ce_value(now_tick)
        self.state = _IDLE
        self.out_idle = out_idle

    def begin(self, now_tick: int) -> None:
        """Start counting the initial count ``n`` from now."""
        self.state = _RUNNING
        self.start = now_tick
        self.irq_checked = 0
        self.null_count = False

    def load(self, now_tick: int) -> None:
        """The Count Register was completely written."""
        n = self.initial_count(self.cr)
        self.null_count = True
        if self.mode in (1, 5):
            if self.state != _RUNNING:
                self.n = n
                self.state = _WAIT_TRIGGER
            else:
                self.pending_n = n   # "not affected unless the counter is retriggered"
            return
        self.n = n
        if self.gate:
            self.begin(now_tick)
        else:
            self.state = _PAUSED
            self.paused_d = 0
            self.irq_checked = 0
            self.null_count = False

    def set_gate(self, level: bool, now_tick: int) -> None:
        if level == self.gate:
            return
        self.gate = level
        if self.mode in (1, 5):
            if level and self.state != _IDLE:
                self.n = self.pending_n or self.initial_count(self.cr)
                self.pending_n = None
                self.begin(now_tick)
            return
        if level:
            if self.state == _PAUSED:
                if self.mode in (2, 3):
                    self.begin(now_tick)   # rising edge reloads the count
                else:
                    d = self.paused_d
                    self.state = _RUNNING
                    self.start = now_tick - d
                    self.null_count = False
        elif self.state == _RUNNING:
            d = now_tick - self.start
            self.state = _PAUSED
            self.paused_d = max(d, 0)


class I8254:
    """The three counters and the control port, a bus device of 4 bytes (0x40-0x43).

    ``irq`` is ISA IRQ 0 (counter 0's OUT); ``clock`` returns nanoseconds. A wider access is
    split into byte accesses at consecutive offsets, as an ISA bus would.
    """

    def __init__(
        self,
        irq: IrqLine | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        on_timer_change: Callable[[], None] | None = None,
    ) -> None:
        self.irq = irq
        self.clock = clock
        self.on_timer_change = on_timer_change
        self.irq0_coalesced = 0
        self._lock = threading.RLock()
        self._counters = [_Counter(i) for i in range(3)]

    # --- bus interface --------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        with self._lock:
            now = ticks_at(self.clock())
            for i in range(len(data)):
                data[i] = self._read_byte(offset + i, now)

    def write(self, offset: int, data: bytes) -> None:
        changed = False
        with self._lock:
            now_ns = self.clock()
            now = ticks_at(now_ns)
            for i, value in enumerate(bytes(data)):
                changed |= self._write_byte(offset + i, value, now_ns, now)
        if changed and self.on_timer_change is not None:
            self.on_timer_change()

    # --- timer thread interface -----------------------------------------------------------
    def next_deadline(self) -> int | None:
        """Clock time (ns) of the next rising edge of OUT0, or None when none is coming."""
        with self._lock:
            if self.irq is None:
                return None
            c = self._counters[0]
            edge = c.next_rising_edge(c.irq_checked)
            return None if edge is None else ns_of_tick(c.start + edge)

    def tick(self, now_ns: int) -> None:
        """Pulse IRQ 0 if OUT0 rose since the last check (missed edges coalesce)."""
        with self._lock:
            self._check_irq0(ticks_at(now_ns))

    # --- wiring used by port 0x61 and the glue --------------------------------------------
    def set_gate(self, counter: int, level: bool) -> None:
        """Drive GATE of ``counter`` (0-2). On a PC only counter 2's is not tied high."""
        if not 0 <= counter <= 2:
            return
        with self._lock:
            now_ns = self.clock()
            now = ticks_at(now_ns)
            if counter == 0:
                self._check_irq0(now)
            self._counters[counter].set_gate(bool(level), now)
        if counter == 0 and self.on_timer_change is not None:
            self.on_timer_change()

    def gate(self, counter: int) -> bool:
        with self._lock:
            return self._counters[counter].gate

    def out(self, counter: int) -> bool:
        """The OUT pin of ``counter`` now, following the clock."""
        with self._lock:
            return self._counters[counter].out(ticks_at(self.clock()))

    def counter_value(self, counter: int) -> int:
        """The Counting Element now, as the guest would read it unlatched (for tests, logs)."""
        with self._lock:
            return self._counters[counter].encoded_ce(ticks_at(self.clock()))

    def mode(self, counter: int) -> int:
        with self._lock:
            return self._counters[counter].mode

    # --- internals ------------------------------------------------------------------------
    def _check_irq0(self, now_tick: int) -> None:
        c = self._counters[0]
        d = c.elapsed(now_tick)
        if c.state != _RUNNING or d is None:
            return
        first = c.next_rising_edge(c.irq_checked)
        if first is not None and first <= d:
            if c.mode in (2, 3):
                self.irq0_coalesced += (d // c.n) - (c.irq_checked // c.n) - 1
            if self.irq is not None:
                self.irq.pulse()
        c.irq_checked = max(d, c.irq_checked)

    def _read_byte(self, offset: int, now: int) -> int:
        if not 0 <= offset < CONTROL:
            return 0   # the Control Word Register is write-only (and beyond it is not ours)
        c = self._counters[offset]
        if c.status_latch is not None:
            value = c.status_latch
            c.status_latch = None
            return value
        if c.latch:
            return c.latch.pop(0)
        ce = c.encoded_ce(now)
        if c.rw == RW_LSB:
            return ce & 0xFF
        if c.rw == RW_MSB:
            return ce >> 8
        msb = c.read_msb_next
        c.read_msb_next = not msb
        return ce >> 8 if msb else ce & 0xFF

    def _write_byte(self, offset: int, value: int, now_ns: int, now: int) -> bool:
        """Returns True when counter 0 changed (the IRQ deadline may have moved)."""
        if offset == CONTROL:
            sc = value >> 6
            if sc == SC_READ_BACK:
                self._read_back(value, now)
                return False
            if sc == 0:
                self._check_irq0(now)
            self._control_word(self._counters[sc], value, now)
            return sc == 0
        if not 0 <= offset < CONTROL:
            return False
        c = self._counters[offset]
        if offset == 0:
            self._check_irq0(now)
        if c.rw == RW_LSB:
            c.cr = value
        elif c.rw == RW_MSB:
            c.cr = value << 8
        elif not c.write_msb_next:
            c.cr_lsb = value
            c.write_msb_next = True
            if c.mode == 0:
                # "Writing the first byte disables counting" (mode 0): OUT stays low.
                c.stop(now, out_idle=False)
                c.null_count = True
            return offset == 0
        else:
            c.cr = value << 8 | c.cr_lsb
            c.write_msb_next = False
        c.load(now)
        return offset == 0

    def _control_word(self, c: _Counter, value: int, now: int) -> None:
        rw = (value & CW_RW) >> 4
        if rw == RW_LATCH:
            # Counter Latch command: ignored while a previous latch is unread.
            if not c.latch:
                c.latch = self._latched_bytes(c, now)
            return
        mode_bits = (value & CW_M) >> 1
        c.rw = rw
        c.mode_bits = mode_bits
        c.mode = mode_bits & 3 if mode_bits & 2 else mode_bits
        c.bcd = bool(value & CW_BCD)
        c.write_msb_next = False
        c.read_msb_next = False
        c.latch = []
        c.status_latch = None
        c.null_count = True
        c.pending_n = None
        # "When a Control Word is written to a Counter, all Control Logic is immediately reset
        # and OUT goes to a known initial state": low in mode 0, high in every other mode.
        c.stop(now, out_idle=c.mode != 0)

    @staticmethod
    def _latched_bytes(c: _Counter, now: int) -> list[int]:
        ce = c.encoded_ce(now)
        if c.rw == RW_LSB:
            return [ce & 0xFF]
        if c.rw == RW_MSB:
            return [ce >> 8]
        # A latch taken between the two bytes of an unlatched read still starts with the LSB;
        # the datasheet makes latch reads independent of the unlatched flip-flop.
        return [ce & 0xFF, ce >> 8]

    def _read_back(self, value: int, now: int) -> None:
        for i, bit in enumerate((RB_CNT0, RB_CNT1, RB_CNT2)):
            if not value & bit:
                continue
            c = self._counters[i]
            if not value & RB_COUNT_N and not c.latch:
                c.latch = self._latched_bytes(c, now)
            if not value & RB_STATUS_N and c.status_latch is None:
                c.status_latch = c.status(now)


class Port61:
    """Port 0x61 ("NMI status and control"), a bus device of 1 byte.

    Bit 0 drives counter 2's GATE, bit 1 enables the speaker, bits 2-3 are plain R/W bits;
    reads add bit 4 (refresh request toggle, flipping every 15.085 us of the clock) and
    bit 5 (counter 2's OUT, following the clock). Bits 6-7 (parity and channel check
    status) read 0: this machine has neither. Linux calibrates the TSC by setting bit 0,
    programming counter 2 in mode 0 and polling bit 5.
    """

    def __init__(self, pit: I8254) -> None:
        self.pit = pit
        self._bits = 0
        # The PIT's lock, so a GATE change and the bits that caused it stay in order.
        self._lock = pit._lock
        pit.set_gate(2, False)   # port 0x61 resets to 0: counter 2's GATE starts low

    def read(self, offset: int, data: memoryview) -> None:
        for i in range(len(data)):
            data[i] = self._value() if offset + i == 0 else 0xFF

    def write(self, offset: int, data: bytes) -> None:
        if offset != 0 or len(data) == 0:
            return
        with self._lock:
            self._bits = data[0] & PORT61_RW_MASK
            self.pit.set_gate(2, bool(self._bits & PORT61_GATE2))

    @property
    def speaker_enabled(self) -> bool:
        return bool(self._bits & PORT61_SPKR_DATA)

    def _value(self) -> int:
        with self._lock:
            now_ns = self.pit.clock()
            refresh = PORT61_REFRESH if (now_ns // REFRESH_HALF_PERIOD_NS) & 1 else 0
            out2 = PORT61_OUT2 if self.pit.out(2) else 0
            return self._bits | refresh | out2
