"""A Motorola MC146818 real-time clock with its 128 bytes of CMOS RAM, as a PC wires it.

Register and bit names are those of the MC146818A datasheet: time, calendar and alarm bytes
0x00-0x09, Register A (UIP, DV2-DV0, RS3-RS0), B (SET, PIE, AIE, UIE, SQWE, DM, 24/12, DSE),
C (IRQF, PF, AF, UF) and D (VRT), then general-purpose RAM. The PC adds the century byte at
0x32 (0x37, the IBM PS/2 century byte, is an alias of it as in QEMU). Where the datasheet
leaves a choice open the model follows QEMU's ``hw/rtc/mc146818rtc.c``.

The PC decodes two ports (the glue places the device at 0x70, 2 bytes): offset 0 is the
index register (bits 6-0 select the byte, bit 7 masks NMI, kept in :attr:`MC146818.nmi_masked`;
the port is write-only and reads 0xff as in QEMU), offset 1 reads or writes the selected byte.

How time works here:

* **The divider chain is anchored to the injected clock.** While DV2-DV0 select a running
  time base (000, 001 or 010; QEMU treats all three as the 32.768 kHz one) the chain runs;
  11x holds it in reset and leaving reset starts it so that the first update comes half a
  second later, as the datasheet says. Updates happen on whole seconds of the chain; the
  periodic interrupt is a tap of the same chain, so changing RS3-RS0 keeps its phase.
* **Guest time is a count of seconds** that each update advances, starting from ``base``
  (UTC). SET=1 inhibits updates and freezes what the time bytes show; the guest may then
  write them, and clearing SET takes them as the new time (the chain's phase is kept, so
  the next update comes at the next whole second of the chain). A time byte written while
  the clock runs sets the time at once (as QEMU). Invalid values (month 13, a 31st of
  February, bad BCD) are normalised rather than refused: the day overflows into the next
  month, the other fields are clamped.
* **The day of week is computed from the date** (1 = Sunday) rather than kept as an
  independent counter, as QEMU does. DSE is kept as a bit but no daylight-saving
  adjustment is made (Linux never sets it; the PC's time is UTC or local standard time).
* **UIP** reads 1 during the last 244 us (8 periods of 32.768 kHz) before each update while
  updates are enabled, the window in which the datasheet warns that the time bytes are
  about to change. The update itself is instantaneous.
* **Flags are set whatever the enables say**: PF at each periodic tick (RS != 0), UF at
  each update, AF at each update whose new time matches the alarm (each alarm byte may be a
  "don't care" value 0xC0-0xFF). IRQF = (PF and PIE) or (AF and AIE) or (UF and UIE).
  Reading Register C returns and clears all of them.

The IRQ output follows IRQF as a level (QEMU's ``qemu_irq_raise`` / ``qemu_irq_lower``):
``irq.set_level(True)`` when IRQF becomes 1, ``set_level(False)`` when Register C is read
or when clearing an enable bit drops IRQF. On a PC IRQ 8 is edge triggered, so the guest
sees one interrupt per 0-to-1 transition and must read Register C to get the next one, as
on real hardware. The device starts no thread: the machine's timer thread asks
:meth:`MC146818.next_deadline` (the clock time at which IRQF would next become 1) and calls
:meth:`MC146818.tick`. Between those calls flags are brought up to date lazily on every
access, so a late timer thread never loses a flag.

Every entry point takes one lock. ``irq.set_level`` is called while it is held, which keeps
level changes in order; it must not call back into the device. ``on_timer_change`` is
called after the lock is released whenever a guest access may have moved the deadline.
"""
from __future__ import annotations

import datetime as _dt
import threading
import time
from typing import Callable

from microvm.api import IrqLine, get_logger

log = get_logger("microvm.rtc_mc146818")

NS_PER_S = 1_000_000_000
RTC_CLOCK_RATE = 32768          # the time base DV2-DV0 = 010 selects
UIP_HOLD_NS = 8 * NS_PER_S // RTC_CLOCK_RATE   # 244140 ns: UIP's lead before an update
CMOS_SIZE = 128

# Bytes (datasheet figure 3 "address map").
RTC_SECONDS = 0x00
RTC_SECONDS_ALARM = 0x01
RTC_MINUTES = 0x02
RTC_MINUTES_ALARM = 0x03
RTC_HOURS = 0x04
RTC_HOURS_ALARM = 0x05
RTC_DAY_OF_WEEK = 0x06
RTC_DAY_OF_MONTH = 0x07
RTC_MONTH = 0x08
RTC_YEAR = 0x09
RTC_REG_A = 0x0A
RTC_REG_B = 0x0B
RTC_REG_C = 0x0C
RTC_REG_D = 0x0D
RTC_CENTURY = 0x32              # PC/AT convention, as QEMU's RTC_CENTURY
RTC_IBM_PS2_CENTURY_BYTE = 0x37
TIME_BYTES = (
    RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH,
    RTC_MONTH, RTC_YEAR, RTC_CENTURY,
)
ALARM_DONT_CARE = 0xC0          # both top bits set: the alarm byte matches any value

# Register A
REG_A_UIP = 0x80
REG_A_DV = 0x70                 # DV2-DV0
REG_A_RS = 0x0F                 # RS3-RS0
DV_32KHZ = 0x20                 # 010: the PC's 32.768 kHz crystal
DV_RESET = 0x60                 # 11x: divider chain held in reset

# Register B
REG_B_SET = 0x80
REG_B_PIE = 0x40
REG_B_AIE = 0x20
REG_B_UIE = 0x10
REG_B_SQWE = 0x08
REG_B_DM = 0x04                 # 1 = binary, 0 = BCD
REG_B_24H = 0x02                # 1 = 24-hour mode
REG_B_DSE = 0x01

# Register C
REG_C_IRQF = 0x80
REG_C_PF = 0x40
REG_C_AF = 0x20
REG_C_UF = 0x10
REG_C_MASK = 0x70               # the three flags, aligned with PIE, AIE, UIE in Register B

# Register D
REG_D_VRT = 0x80                # valid RAM and time: the "battery" is always good

# Power-on values QEMU uses: 32.768 kHz divider, 1024 Hz periodic rate; 24-hour BCD.
REG_A_DEFAULT = DV_32KHZ | 0x06
REG_B_DEFAULT = REG_B_24H

SECONDS_PER_DAY = 86400


# --- calendar arithmetic (proleptic Gregorian, any year; H. Hinnant's algorithms) ---------
def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a date; ``d`` past the month's end overflows forward."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


def cmos_memory_bytes(below_4g: int, above_4g: int) -> dict[int, int]:
    """The CMOS memory-size bytes exactly as QEMU's ``microvm_set_rtc`` stores them.

    0x15/0x16: base memory in KiB (at most 640); 0x17/0x18 and 0x30/0x31: memory above
    1 MiB in KiB (capped at 65535); 0x34/0x35: memory above 16 MiB in 64 KiB units (capped
    at 65535); 0x5b-0x5d: memory above 4 GiB in 64 KiB units. Each value is stored little
    endian and truncated to its bytes, as ``rtc_set_memory`` does.
    """
    kib, mib = 1024, 1024 * 1024
    out: dict[int, int] = {}
    val = min(below_4g // kib, 640)
    out[0x15], out[0x16] = val & 0xFF, (val >> 8) & 0xFF
    val = (below_4g - 1 * mib) // kib if below_4g > 1 * mib else 0
    val = min(val, 65535)
    out[0x17], out[0x18] = val & 0xFF, (val >> 8) & 0xFF
    out[0x30], out[0x31] = val & 0xFF, (val >> 8) & 0xFF
    val = (below_4g - 16 * mib) // (64 * kib) if below_4g > 16 * mib else 0
    val = min(val, 65535)
    out[0x34], out[0x35] = val & 0xFF, (val >> 8) & 0xFF
    val = above_4g // 65536
    out[0x5B], out[0x5C], out[0x5D] = val & 0xFF, (val >> 8) & 0xFF, (val >> 16) & 0xFF
    return out


def periodic_period_ticks(rs: int) -> int:
    """Periodic interrupt period in 32.768 kHz cycles for RS3-RS0 (0 = none).

    Datasheet table 5: rates 1 and 2 repeat rates 8 and 9 (256 and 128 Hz) with a 32.768 kHz
    time base; otherwise the period is 2^(RS-1) cycles, 122.070 us (RS=3) to 500 ms (RS=15).
    """
    rs &= REG_A_RS
    if rs == 0:
        return 0
    if rs <= 2:
        rs += 7
    return 1 << (rs - 1)


class MC146818:
    """The RTC and CMOS RAM; a bus device of 2 bytes (index, data).

    ``irq`` is ISA IRQ 8; ``clock`` returns nanoseconds; ``base`` is the guest's time when
    the device is made (UTC; a naive datetime is taken as UTC; default now).
    """

    def __init__(
        self,
        irq: IrqLine | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        base: _dt.datetime | None = None,
        on_timer_change: Callable[[], None] | None = None,
    ) -> None:
        self.irq = irq
        self.clock = clock
        self.on_timer_change = on_timer_change
        self._lock = threading.RLock()
        self._cmos = bytearray(CMOS_SIZE)
        self._index = 0
        self.nmi_masked = False
        self._irq_level = False
        if base is None:
            base = _dt.datetime.now(_dt.timezone.utc)
        if base.tzinfo is not None:
            base = base.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        now = clock()
        base_day = days_from_civil(base.year, base.month, base.day)
        self._secs = base_day * SECONDS_PER_DAY + base.hour * 3600 + base.minute * 60 + base.second
        # The chain's phase: the sub-second part of ``base`` has already elapsed.
        self._anchor = now - base.microsecond * 1000
        self._secs_ref = now      # the clock time at which guest time was ``_secs``
        self._synced = now        # flags are up to date for (.., _synced]
        self._cmos[RTC_REG_A] = REG_A_DEFAULT
        self._cmos[RTC_REG_B] = REG_B_DEFAULT
        self._cmos[RTC_REG_D] = REG_D_VRT
        self._store_time(self._secs)

    # --- bus interface --------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        changed = False
        with self._lock:
            now = self.clock()
            for i in range(len(data)):
                value, c = self._read_byte(offset + i, now)
                data[i] = value
                changed |= c
        if changed and self.on_timer_change is not None:
            self.on_timer_change()

    def write(self, offset: int, data: bytes) -> None:
        changed = False
        with self._lock:
            now = self.clock()
            for i, value in enumerate(bytes(data)):
                changed |= self._write_byte(offset + i, value, now)
        if changed and self.on_timer_change is not None:
            self.on_timer_change()

    # --- timer thread interface -----------------------------------------------------------
    def next_deadline(self) -> int | None:
        """Clock time (ns) at which IRQF would next become 1, or None (IRQF already 1, or
        no enabled source can fire)."""
        with self._lock:
            self._sync(self.clock())
            if self._cmos[RTC_REG_C] & REG_C_IRQF:
                return None
            b = self._cmos[RTC_REG_B]
            after = self._synced
            candidates: list[int] = []
            if b & REG_B_PIE:
                t = self._next_periodic(after)
                if t is not None:
                    candidates.append(t)
            if b & (REG_B_UIE | REG_B_AIE) and self._updating():
                # An alarm can only match at an update, so waking at each update is enough.
                candidates.append(self._next_update(after))
            return min(candidates) if candidates else None

    def tick(self, now_ns: int) -> None:
        """Bring flags and IRQ up to ``now_ns`` (raises IRQ 8 if IRQF became 1)."""
        with self._lock:
            self._sync(now_ns)

    # --- glue helpers ---------------------------------------------------------------------
    def set_memory(self, index: int, value: int) -> None:
        """Store a CMOS byte as firmware set-up would (memory sizes); no side effects."""
        if 0 <= index < CMOS_SIZE:
            with self._lock:
                self._cmos[index] = value & 0xFF

    def get_memory(self, index: int) -> int:
        """A CMOS byte as stored (time bytes as last materialised)."""
        with self._lock:
            return self._cmos[index % CMOS_SIZE]

    def guest_time(self) -> _dt.datetime:
        """What the time bytes would say now, as a naive UTC datetime (for logs and tests)."""
        with self._lock:
            now = self.clock()
            secs = self._guest_secs(now) if self._running() else self._parse_time()
            days, rem = divmod(secs, SECONDS_PER_DAY)
            y, m, d = civil_from_days(days)
            if y < 1:
                return _dt.datetime.min
            if y > 9999:
                return _dt.datetime.max.replace(microsecond=0)
            return _dt.datetime(y, m, d, rem // 3600, rem // 60 % 60, rem % 60)

    @property
    def irq_level(self) -> bool:
        return self._irq_level

    # --- state predicates -----------------------------------------------------------------
    def _divider_running(self) -> bool:
        return (self._cmos[RTC_REG_A] & REG_A_DV) <= DV_32KHZ

    def _running(self) -> bool:
        """Updates happen: not SET, divider running (QEMU's ``rtc_running``)."""
        return not self._cmos[RTC_REG_B] & REG_B_SET and self._divider_running()

    def _updating(self) -> bool:
        """Update cycles (and with them UF and AF) occur: the divider runs. SET only stops
        the time bytes from changing (the datasheet: "setting SET allows interrupts")."""
        return self._divider_running()

    # --- the divider chain ----------------------------------------------------------------
    def _updates_between(self, a: int, b: int) -> int:
        """Whole seconds of the chain in (a, b]."""
        return max((b - self._anchor) // NS_PER_S - (a - self._anchor) // NS_PER_S, 0)

    def _next_update(self, t: int) -> int:
        return self._anchor + ((t - self._anchor) // NS_PER_S + 1) * NS_PER_S

    def _periodic_count(self, t: int, period: int) -> int:
        """Periodic ticks of ``period`` 32 kHz cycles from the anchor to ``t`` (floor)."""
        return (t - self._anchor) * RTC_CLOCK_RATE // (NS_PER_S * period)

    def _next_periodic(self, t: int) -> int | None:
        period = periodic_period_ticks(self._cmos[RTC_REG_A])
        if not period or not self._divider_running():
            return None
        k = self._periodic_count(t, period) + 1
        return self._anchor + -((-k * period * NS_PER_S) // RTC_CLOCK_RATE)

    def _guest_secs(self, now: int) -> int:
        return self._secs + self._updates_between(self._secs_ref, now)

    def _uip(self, now: int) -> bool:
        if not self._running():
            return False
        return (now - self._anchor) % NS_PER_S >= NS_PER_S - UIP_HOLD_NS

    # --- flags ----------------------------------------------------------------------------
    def _sync(self, now: int) -> None:
        """Set the flags for everything that happened in (_synced, now] and drive IRQ."""
        last = self._synced
        if now <= last:
            self._update_irq()
            return
        flags = 0
        if self._divider_running():
            n = self._updates_between(last, now)
            if n:
                flags |= REG_C_UF
                if self._alarm_hit(last, n):
                    flags |= REG_C_AF
            period = periodic_period_ticks(self._cmos[RTC_REG_A])
            if period and self._periodic_count(now, period) > self._periodic_count(last, period):
                flags |= REG_C_PF
        self._synced = now
        self._cmos[RTC_REG_C] |= flags
        self._update_irq()

    def _update_irq(self) -> None:
        c = self._cmos[RTC_REG_C]
        if c & self._cmos[RTC_REG_B] & REG_C_MASK:
            c |= REG_C_IRQF
        else:
            c &= ~REG_C_IRQF
        self._cmos[RTC_REG_C] = c
        level = bool(c & REG_C_IRQF)
        if level != self._irq_level:
            self._irq_level = level
            if self.irq is not None:
                self.irq.set_level(level)

    def _alarm_fields(self) -> tuple[int | None, int | None, int | None] | None:
        """(hour, minute, second) of the alarm in 24-hour binary, None for don't care; None
        overall when a byte holds a value no time can match."""
        fields: list[int | None] = []
        for reg, limit in ((RTC_HOURS_ALARM, 24), (RTC_MINUTES_ALARM, 60), (RTC_SECONDS_ALARM, 60)):
            raw = self._cmos[reg]
            if raw & ALARM_DONT_CARE == ALARM_DONT_CARE:
                fields.append(None)
                continue
            if reg == RTC_HOURS_ALARM:
                value = self._decode_hour(raw)
            else:
                value = self._from_bcd(raw)
            if not 0 <= value < limit:
                return None
            fields.append(value)
        return fields[0], fields[1], fields[2]

    def _alarm_hit(self, last: int, n: int) -> bool:
        """Did an update in (last, last + n updates] produce a time matching the alarm?

        With SET=1 the time bytes do not change, so the frozen time is compared (the
        datasheet lets AF fire in SET mode; QEMU compares the frozen bytes as well).
        """
        alarm = self._alarm_fields()
        if alarm is None:
            return False
        if not self._running():
            secs = self._parse_time()
            return self._matches(alarm, secs % SECONDS_PER_DAY)
        first = self._guest_secs(last) + 1
        if n >= SECONDS_PER_DAY:
            return True   # every second of the day went by
        nxt = self._next_match(alarm, first % SECONDS_PER_DAY)
        return nxt is not None and nxt < n

    @staticmethod
    def _matches(alarm: tuple[int | None, int | None, int | None], sod: int) -> bool:
        h, m, s = alarm
        return (
            (h is None or h == sod // 3600)
            and (m is None or m == sod // 60 % 60)
            and (s is None or s == sod % 60)
        )

    @staticmethod
    def _next_match(alarm: tuple[int | None, int | None, int | None], sod: int) -> int | None:
        """Seconds from second-of-day ``sod`` (inclusive) to the next time matching ``alarm``
        (wrapping past midnight), by a lexicographic search over (hour, minute, second)."""
        h, m, s = alarm
        hours = [h] if h is not None else list(range(24))
        minutes = [m] if m is not None else list(range(60))
        seconds = [s] if s is not None else list(range(60))

        def at_or_after(t: int) -> int | None:
            h0, m0, s0 = t // 3600, t // 60 % 60, t % 60
            for hh in hours:
                if hh < h0:
                    continue
                if hh > h0:
                    return hh * 3600 + minutes[0] * 60 + seconds[0]
                for mm in minutes:
                    if mm < m0:
                        continue
                    if mm > m0:
                        return hh * 3600 + mm * 60 + seconds[0]
                    for ss in seconds:
                        if ss >= s0:
                            return hh * 3600 + mm * 60 + ss
            return None

        t = at_or_after(sod)
        if t is not None:
            return t - sod
        t = at_or_after(0)
        return None if t is None else t + SECONDS_PER_DAY - sod

    # --- time bytes -----------------------------------------------------------------------
    def _bin(self) -> bool:
        return bool(self._cmos[RTC_REG_B] & REG_B_DM)

    def _to_bcd(self, value: int) -> int:
        if self._bin():
            return value & 0xFF
        return ((value // 10) << 4 | value % 10) & 0xFF

    def _from_bcd(self, raw: int) -> int:
        if self._bin():
            return raw
        return (raw >> 4) * 10 + (raw & 0x0F)

    def _decode_hour(self, raw: int) -> int:
        """Hour byte to 0-23: in 12-hour mode bit 7 is PM and 12 means 0 (as QEMU)."""
        if self._cmos[RTC_REG_B] & REG_B_24H:
            return self._from_bcd(raw)
        hour = self._from_bcd(raw & 0x7F) % 12
        return hour + 12 if raw & 0x80 else hour

    def _encode_hour(self, hour: int) -> int:
        if self._cmos[RTC_REG_B] & REG_B_24H:
            return self._to_bcd(hour)
        h12 = hour % 12 or 12
        return self._to_bcd(h12) | (0x80 if hour >= 12 else 0)

    def _store_time(self, secs: int) -> None:
        """Materialise guest time ``secs`` into the time bytes in the current format."""
        days, rem = divmod(secs, SECONDS_PER_DAY)
        y, mo, d = civil_from_days(days)
        c = self._cmos
        c[RTC_SECONDS] = self._to_bcd(rem % 60)
        c[RTC_MINUTES] = self._to_bcd(rem // 60 % 60)
        c[RTC_HOURS] = self._encode_hour(rem // 3600)
        c[RTC_DAY_OF_WEEK] = self._to_bcd((days + 4) % 7 + 1)   # 1970-01-01 was a Thursday
        c[RTC_DAY_OF_MONTH] = self._to_bcd(d)
        c[RTC_MONTH] = self._to_bcd(mo)
        c[RTC_YEAR] = self._to_bcd(y % 100)
        c[RTC_CENTURY] = self._to_bcd(y // 100 % 100)

    def _parse_time(self) -> int:
        """Guest time from the time bytes, normalising what no calendar has."""
        c = self._cmos

        def field(reg: int, lo: int, hi: int) -> int:
            return min(max(self._from_bcd(c[reg]), lo), hi)

        sec = field(RTC_SECONDS, 0, 59)
        minute = field(RTC_MINUTES, 0, 59)
        hour = min(max(self._decode_hour(c[RTC_HOURS]), 0), 23)
        day = field(RTC_DAY_OF_MONTH, 1, 31)
        month = field(RTC_MONTH, 1, 12)
        year = self._from_bcd(c[RTC_CENTURY]) * 100 + self._from_bcd(c[RTC_YEAR])
        days = days_from_civil(year, month, day)
        return days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + sec

    def _freeze(self, now: int) -> None:
        """Updates stop: the time bytes keep the time as of ``now``."""
        self._secs = self._guest_secs(now)
        self._secs_ref = now
        self._store_time(self._secs)

    def _thaw(self, now: int) -> None:
        """Updates resume from the time the bytes hold."""
        self._secs = self._parse_time()
        self._secs_ref = now

    # --- register access ------------------------------------------------------------------
    def _selected(self, now: int) -> int:
        """Bring the clock up to ``now`` and return the register the index port selects (the
        IBM PS/2 century byte is an alias of the century register)."""
        self._sync(now)
        return RTC_CENTURY if self._index == RTC_IBM_PS2_CENTURY_BYTE else self._index

    def _read_byte(self, offset: int, now: int) -> tuple[int, bool]:
        if offset != 1:
            return 0xFF, False   # the index port is write-only
        index = self._selected(now)
        if index in TIME_BYTES:
            if self._running():
                self._store_time(self._guest_secs(now))
            return self._cmos[index], False
        if index == RTC_REG_A:
            return self._cmos[RTC_REG_A] | (REG_A_UIP if self._uip(now) else 0), False
        if index == RTC_REG_C:
            value = self._cmos[RTC_REG_C]
            self._cmos[RTC_REG_C] = 0
            self._update_irq()
            return value, bool(value)
        if index == RTC_REG_D:
            return REG_D_VRT, False
        return self._cmos[index], False

    def _write_byte(self, offset: int, value: int, now: int) -> bool:
        if offset == 0:
            self._index = value & 0x7F
            self.nmi_masked = bool(value & 0x80)
            return False
        if offset != 1:
            return False
        index = self._selected(now)
        if index in TIME_BYTES:
            if self._running():
                self._store_time(self._guest_secs(now))
                self._cmos[index] = value
                self._thaw(now)
                return True
            self._cmos[index] = value
            return False
        if index in (RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM):
            self._cmos[index] = value
            return True
        if index == RTC_REG_A:
            self._write_reg_a(value, now)
            return True
        if index == RTC_REG_B:
            self._write_reg_b(value, now)
            return True
        if index in (RTC_REG_C, RTC_REG_D):
            return False   # read-only
        self._cmos[index] = value
        return False

    def _write_reg_a(self, value: int, now: int) -> None:
        was_running = self._running()
        was_divider = self._divider_running()
        if was_running:
            self._freeze(now)
        self._cmos[RTC_REG_A] = value & ~REG_A_UIP   # UIP is read-only
        if not was_divider and self._divider_running():
            # "The first update cycle begins one-half second later" after the divider reset
            # is removed; the periodic taps restart from there too.
            self._anchor = now - NS_PER_S // 2
            self._synced = now
        if self._running() and not was_running:
            self._thaw(now)
        elif self._running():
            self._secs_ref = now   # unchanged time, same chain
        self._update_irq()

    def _write_reg_b(self, value: int, now: int) -> None:
        was_running = self._running()
        if value & REG_B_SET:
            value &= ~REG_B_UIE   # the datasheet clears UIE when SET goes to 1 (as QEMU)
        if was_running:
            self._freeze(now)
        self._cmos[RTC_REG_B] = value
        if self._running():
            if was_running:
                self._store_time(self._secs)   # DM or 24/12 may have changed
                self._secs_ref = now
            else:
                self._thaw(now)
        self._update_irq()
