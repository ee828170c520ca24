"""The MC146818 against its datasheet with a fake clock and a recording IRQ line, without KVM."""
from __future__ import annotations

import datetime as dt
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from microvm.api import RecordingIrqLine

from microvm_rtc_mc146818.device import (
    MC146818,
    RTC_CENTURY,
    RTC_DAY_OF_MONTH,
    RTC_DAY_OF_WEEK,
    RTC_HOURS,
    RTC_HOURS_ALARM,
    RTC_MINUTES,
    RTC_MINUTES_ALARM,
    RTC_MONTH,
    RTC_REG_A,
    RTC_REG_B,
    RTC_REG_C,
    RTC_REG_D,
    RTC_SECONDS,
    RTC_SECONDS_ALARM,
    RTC_YEAR,
    UIP_HOLD_NS,
    civil_from_days,
    cmos_memory_bytes,
    days_from_civil,
    periodic_period_ticks,
)

S = 1_000_000_000
MIB = 1024 * 1024


class FakeClock:
    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Rtc:
    def __init__(self, base: dt.datetime = dt.datetime(2024, 3, 15, 13, 45, 30), start: int = 0) -> None:
        self.clock = FakeClock(start)
        self.irq = RecordingIrqLine(gsi=8)
        self.kicks = 0
        self.dev = MC146818(irq=self.irq, clock=self.clock, base=base, on_timer_change=self._kick)

    def _kick(self) -> None:
        self.kicks += 1

    def get(self, index: int) -> int:
        self.dev.write(0, bytes([index]))
        buf = bytearray(1)
        self.dev.read(1, memoryview(buf))
        return buf[0]

    def set(self, index: int, value: int) -> None:
        self.dev.write(0, bytes([index]))
        self.dev.write(1, bytes([value]))

    def time_bytes(self) -> dict[str, int]:
        return {
            "sec": self.get(RTC_SECONDS),
            "min": self.get(RTC_MINUTES),
            "hour": self.get(RTC_HOURS),
            "dow": self.get(RTC_DAY_OF_WEEK),
            "day": self.get(RTC_DAY_OF_MONTH),
            "mon": self.get(RTC_MONTH),
            "year": self.get(RTC_YEAR),
            "cent": self.get(RTC_CENTURY),
        }

    def run_deadlines(self, until: int) -> int:
        """Act as the timer thread plus a guest ISR that reads Register C; returns the
        number of interrupts (0-to-1 edges of the IRQ line)."""
        n = 0
        while True:
            dl = self.dev.next_deadline()
            if dl is None or dl > until:
                break
            self.clock.now = dl
            self.dev.tick(dl)
            if self.irq.level:
                n += 1
                self.get(RTC_REG_C)
        self.clock.now = until
        return n


def bcd(v: int) -> int:
    return (v // 10) << 4 | v % 10


def rtc_dow(d: dt.date) -> int:
    return d.isoweekday() % 7 + 1   # 1 = Sunday


def expect_bcd(t: dt.datetime) -> dict[str, int]:
    return {
        "sec": bcd(t.second), "min": bcd(t.minute), "hour": bcd(t.hour), "dow": rtc_dow(t.date()),
        "day": bcd(t.day), "mon": bcd(t.month), "year": bcd(t.year % 100), "cent": bcd(t.year // 100),
    }


# ---- power-on state and fixed registers ------------------------------------------------------
def test_power_on_registers() -> None:
    r = Rtc()
    assert r.get(RTC_REG_A) == 0x26       # DV=010 (32.768 kHz), RS=0110 (1024 Hz)
    assert r.get(RTC_REG_B) == 0x02       # 24-hour, BCD
    assert r.get(RTC_REG_C) == 0x00
    assert r.get(RTC_REG_D) == 0x80       # VRT
    assert not r.irq.level


def test_index_port_is_write_only_and_keeps_nmi_mask() -> None:
    r = Rtc()
    buf = bytearray(1)
    r.dev.read(0, memoryview(buf))
    assert buf[0] == 0xFF
    r.dev.write(0, bytes([0x80 | RTC_REG_D]))
    assert r.dev.nmi_masked
    r.dev.read(1, memoryview(buf))
    assert buf[0] == 0x80                 # index is bits 6-0
    r.dev.write(0, bytes([RTC_REG_D]))
    assert not r.dev.nmi_masked


def test_register_c_and_d_are_read_only() -> None:
    r = Rtc()
    r.set(RTC_REG_C, 0xF0)
    r.set(RTC_REG_D, 0x00)
    assert r.get(RTC_REG_C) == 0
    assert r.get(RTC_REG_D) == 0x80
    assert not r.irq.level


def test_register_a_uip_is_read_only() -> None:
    r = Rtc()
    r.set(RTC_REG_A, 0xAF)                # UIP | DV=010 | RS=15
    assert r.get(RTC_REG_A) == 0x2F


def test_cmos_ram_bytes() -> None:
    r = Rtc()
    for i in list(range(0x0E, 0x32)) + list(range(0x33, 0x37)) + list(range(0x38, 0x80)):
        r.set(i, i ^ 0x5A)
    for i in list(range(0x0E, 0x32)) + list(range(0x33, 0x37)) + list(range(0x38, 0x80)):
        assert r.get(i) == i ^ 0x5A
    r.dev.set_memory(0x15, 0x1234)
    assert r.get(0x15) == 0x34
    r.dev.set_memory(200, 1)              # out of range: ignored


# ---- time and calendar -----------------------------------------------------------------------
def test_time_bytes_bcd_24h() -> None:
    r = Rtc()
    assert r.time_bytes() == expect_bcd(dt.datetime(2024, 3, 15, 13, 45, 30))
    assert r.get(RTC_DAY_OF_WEEK) == 6    # a Friday


def test_binary_mode() -> None:
    r = Rtc()
    r.set(RTC_REG_B, 0x06)                # DM=1 binary, 24-hour
    assert r.get(RTC_SECONDS) == 30
    assert r.get(RTC_MINUTES) == 45
    assert r.get(RTC_HOURS) == 13
    assert r.get(RTC_DAY_OF_MONTH) == 15
    assert r.get(RTC_MONTH) == 3
    assert r.get(RTC_YEAR) == 24
    assert r.get(RTC_CENTURY) == 20


@pytest.mark.parametrize(
    ("hour", "dm", "expected"),
    [
        (0, 0, 0x12), (1, 0, 0x01), (11, 0, 0x11), (12, 0, 0x92), (13, 0, 0x81), (23, 0, 0x91),
        (0, 1, 12), (12, 1, 0x80 | 12), (23, 1, 0x80 | 11),
    ],
)
def test_12_hour_mode(hour: int, dm: int, expected: int) -> None:
    r = Rtc(base=dt.datetime(2024, 1, 1, hour, 0, 0))
    r.set(RTC_REG_B, dm << 2)             # 24/12 = 0
    assert r.get(RTC_HOURS) == expected


def test_12_hour_mode_set_time() -> None:
    r = Rtc()
    r.set(RTC_REG_B, 0x80)                # SET, 12-hour, BCD
    r.set(RTC_HOURS, 0x92)                # 12 PM
    r.set(RTC_MINUTES, 0x00)
    r.set(RTC_SECONDS, 0x00)
    r.set(RTC_REG_B, 0x00)
    assert r.dev.guest_time() == dt.datetime(2024, 3, 15, 12, 0, 0)
    r.set(RTC_REG_B, 0x80)
    r.set(RTC_HOURS, 0x12)                # 12 AM
    r.set(RTC_REG_B, 0x00)
    assert r.dev.guest_time().hour == 0


def test_clock_advances_with_the_injected_clock() -> None:
    r = Rtc()
    r.clock.now = S - 1
    assert r.get(RTC_SECONDS) == 0x30
    r.clock.now = S
    assert r.get(RTC_SECONDS) == 0x31
    r.clock.now = 90 * S
    assert r.time_bytes() == expect_bcd(dt.datetime(2024, 3, 15, 13, 47, 0))


@pytest.mark.parametrize(
    "before",
    [
        dt.datetime(2024, 3, 15, 23, 59, 59),   # midnight
        dt.datetime(2024, 4, 30, 23, 59, 59),   # 30-day month end
        dt.datetime(2024, 1, 31, 23, 59, 59),   # 31-day month end
        dt.datetime(2024, 2, 28, 23, 59, 59),   # leap year: to Feb 29
        dt.datetime(2024, 2, 29, 23, 59, 59),   # leap day to March 1
        dt.datetime(2023, 2, 28, 23, 59, 59),   # common year: to March 1
        dt.datetime(2100, 2, 28, 23, 59, 59),   # century, not leap
        dt.datetime(2000, 2, 28, 23, 59, 59),   # 400-year leap
        dt.datetime(2023, 12, 31, 23, 59, 59),  # year end
        dt.datetime(1999, 12, 31, 23, 59, 59),  # century end (0x19 -> 0x20)
        dt.datetime(2099, 12, 31, 23, 59, 59),  # century end (0x20 -> 0x21)
    ],
)
def test_rollover(before: dt.datetime) -> None:
    r = Rtc(base=before)
    assert r.time_bytes() == expect_bcd(before)
    r.clock.now = S
    after = before + dt.timedelta(seconds=1)
    assert r.time_bytes() == expect_bcd(after)


def test_year_end_rollover_binary_with_century() -> None:
    r = Rtc(base=dt.datetime(2099, 12, 31, 23, 59, 59))
    r.set(RTC_REG_B, 0x06)
    r.clock.now = S
    assert [r.get(i) for i in (RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_MONTH, RTC_MONTH, RTC_YEAR, RTC_CENTURY)] == [
        0, 0, 0, 1, 1, 0, 21,
    ]


def test_leap_year_feb_29_via_set_mode() -> None:
    r = Rtc()
    r.set(RTC_REG_B, 0x82)                # SET
    for reg, value in ((RTC_SECONDS, 0x59), (RTC_MINUTES, 0x59), (RTC_HOURS, 0x23),
                       (RTC_DAY_OF_MONTH, 0x28), (RTC_MONTH, 0x02), (RTC_YEAR, 0x24), (RTC_CENTURY, 0x20)):
        r.set(reg, value)
    r.clock.now = 10 * S                  # frozen while SET
    assert r.get(RTC_SECONDS) == 0x59
    r.set(RTC_REG_B, 0x02)
    r.clock.now = 11 * S                  # the chain's next second
    assert r.get(RTC_DAY_OF_MONTH) == 0x29 and r.get(RTC_MONTH) == 0x02
    assert r.get(RTC_DAY_OF_WEEK) == 5    # Thursday
    r.clock.now = 11 * S + 86400 * S
    assert r.get(RTC_DAY_OF_MONTH) == 0x01 and r.get(RTC_MONTH) == 0x03


def test_set_bit_freezes_and_keeps_chain_phase() -> None:
    r = Rtc()
    r.clock.now = S // 4
    r.set(RTC_REG_B, 0x82)
    r.set(RTC_SECONDS, 0x00)
    r.clock.now = 5 * S + S // 2
    assert r.get(RTC_SECONDS) == 0x00
    r.set(RTC_REG_B, 0x02)
    r.clock.now = 6 * S - 1
    assert r.get(RTC_SECONDS) == 0x00
    r.clock.now = 6 * S                   # the next whole second of the chain
    assert r.get(RTC_SECONDS) == 0x01


def test_write_time_while_running_sets_it_at_once() -> None:
    r = Rtc()
    r.set(RTC_MINUTES, 0x10)
    assert r.dev.guest_time() == dt.datetime(2024, 3, 15, 13, 10, 30)
    r.clock.now = S
    assert r.get(RTC_SECONDS) == 0x31


def test_century_alias_0x37() -> None:
    r = Rtc()
    assert r.get(0x37) == 0x20
    r.set(0x37, 0x21)
    assert r.get(RTC_CENTURY) == 0x21
    assert r.dev.guest_time().year == 2124


def test_invalid_time_bytes_are_normalised() -> None:
    r = Rtc()
    r.set(RTC_REG_B, 0x82)
    r.set(RTC_DAY_OF_MONTH, 0x31)
    r.set(RTC_MONTH, 0x02)
    r.set(RTC_YEAR, 0x23)
    r.set(RTC_HOURS, 0xFF)
    r.set(RTC_REG_B, 0x02)
    t = r.dev.guest_time()
    assert (t.month, t.day, t.hour) == (3, 3, 23)


def test_dm_change_while_running_reformats() -> None:
    r = Rtc()
    r.set(RTC_REG_B, 0x06)
    assert r.get(RTC_MINUTES) == 45
    r.set(RTC_REG_B, 0x02)
    assert r.get(RTC_MINUTES) == 0x45
    assert r.dev.guest_time() == dt.datetime(2024, 3, 15, 13, 45, 30)


# ---- UIP -------------------------------------------------------------------------------------
def test_uip_in_the_last_244us_before_each_update() -> None:
    r = Rtc()
    assert UIP_HOLD_NS == 244140
    for sec in (0, 3):
        r.clock.now = sec * S + S - UIP_HOLD_NS - 1
        assert not r.get(RTC_REG_A) & 0x80
        r.clock.now = sec * S + S - UIP_HOLD_NS
        assert r.get(RTC_REG_A) & 0x80
        r.clock.now = sec * S + S - 1
        assert r.get(RTC_REG_A) & 0x80
        r.clock.now = sec * S + S
        assert not r.get(RTC_REG_A) & 0x80


def test_uip_is_clear_in_set_mode_and_divider_reset() -> None:
    r = Rtc()
    r.clock.now = S - 1000
    r.set(RTC_REG_B, 0x82)
    assert not r.get(RTC_REG_A) & 0x80
    r.set(RTC_REG_B, 0x02)
    assert r.get(RTC_REG_A) & 0x80
    r.set(RTC_REG_A, 0x66)
    assert r.get(RTC_REG_A) == 0x66


def test_linux_read_sequence_waits_for_uip() -> None:
    """mc146818_get_time(): spin while UIP, then read the bytes; they are then stable."""
    r = Rtc()
    r.clock.now = S - 100_000
    polls = 0
    while r.get(RTC_REG_A) & 0x80:
        r.clock.now += 10_000
        polls += 1
    assert polls == 10
    assert r.get(RTC_SECONDS) == 0x31


# ---- divider ---------------------------------------------------------------------------------
def test_divider_reset_stops_and_first_update_half_a_second_later() -> None:
    r = Rtc()
    r.clock.now = 300_000_000
    r.set(RTC_REG_A, 0x76)                # DV=111: reset
    r.clock.now = 5 * S
    assert r.get(RTC_SECONDS) == 0x30
    r.set(RTC_REG_A, 0x26)
    r.clock.now = 5 * S + S // 2 - 1
    assert r.get(RTC_SECONDS) == 0x30
    r.clock.now = 5 * S + S // 2
    assert r.get(RTC_SECONDS) == 0x31


def test_divider_reset_stops_interrupts() -> None:
    r = Rtc()
    r.set(RTC_REG_A, 0x66)
    r.set(RTC_REG_B, 0x52)                # PIE | UIE
    assert r.dev.next_deadline() is None
    r.clock.now = 10 * S
    assert r.get(RTC_REG_C) == 0


# ---- periodic interrupt ----------------------------------------------------------------------
def test_periodic_rates_from_table() -> None:
    assert periodic_period_ticks(0) == 0
    assert periodic_period_ticks(1) == 128 and periodic_period_ticks(8) == 128   # 3.90625 ms
    assert periodic_period_ticks(2) == 256 and periodic_period_ticks(9) == 256   # 7.8125 ms
    assert periodic_period_ticks(3) == 4                                          # 122.070 us
    assert periodic_period_ticks(6) == 32                                         # 976.5625 us
    assert periodic_period_ticks(15) == 16384                                     # 500 ms


@pytest.mark.parametrize(("rs", "per_second"), [(6, 1024), (3, 8192), (1, 256), (10, 64), (15, 2)])
def test_periodic_interrupt_count_over_one_second(rs: int, per_second: int) -> None:
    r = Rtc()
    r.set(RTC_REG_A, 0x20 | rs)
    r.set(RTC_REG_B, 0x42)                # PIE, 24-hour, BCD
    assert r.run_deadlines(S) == per_second
    assert r.irq.events.count("high") == per_second


def test_periodic_flag_without_pie_raises_nothing() -> None:
    r = Rtc()
    r.clock.now = 2_000_000
    assert r.dev.next_deadline() is None
    assert r.get(RTC_REG_C) == 0x40       # PF alone, no IRQF
    assert not r.irq.level
    assert r.get(RTC_REG_C) == 0x00


def test_enabling_pie_with_pf_set_raises_at_once_and_disabling_drops() -> None:
    r = Rtc()
    r.clock.now = 2_000_000
    r.set(RTC_REG_B, 0x42)
    assert r.irq.level
    r.set(RTC_REG_B, 0x02)
    assert not r.irq.level
    assert r.get(RTC_REG_C) == 0x40


def test_irq_stays_high_until_register_c_is_read() -> None:
    r = Rtc()
    r.set(RTC_REG_B, 0x42)
    dl = r.dev.next_deadline()
    r.clock.now = dl
    r.dev.tick(dl)
    assert r.irq.level
    assert r.dev.next_deadline() is None  # nothing new can happen on the line
    r.clock.now += 10_000_000             # more periods: coalesced into PF
    assert r.irq.events == ["high"]
    kicks = r.kicks
    assert r.get(RTC_REG_C) == 0xC0
    assert not r.irq.level
    assert r.kicks == kicks + 1           # the timer thread is told to re-arm
    assert r.dev.next_deadline() is not None


def test_rate_change_keeps_chain_phase() -> None:
    r = Rtc()
    r.set(RTC_REG_A, 0x2F)                # 2 Hz
    r.set(RTC_REG_B, 0x42)
    r.clock.now = S // 4
    r.set(RTC_REG_A, 0x2E)                # 4 Hz: next tick at 0.5 s, not 0.5 s after now
    assert r.dev.next_deadline() == S // 2


# ---- update-ended and alarm interrupts -------------------------------------------------------
def test_update_ended_interrupt_each_second() -> None:
    r = Rtc()
    r.set(RTC_REG_A, 0x20)                # no periodic flag to muddle Register C
    r.set(RTC_REG_B, 0x12)                # UIE
    assert r.dev.next_deadline() == S
    assert r.run_deadlines(10 * S) == 10
    r.clock.now = 11 * S
    r.dev.tick(11 * S)
    assert r.get(RTC_REG_C) == 0x90       # IRQF | UF


def test_set_bit_clears_uie() -> None:
    r = Rtc()
    r.set(RTC_REG_B, 0x92)
    assert r.get(RTC_REG_B) == 0x82


def test_update_flag_set_without_uie() -> None:
    r = Rtc()
    r.set(RTC_REG_A, 0x20)                # no periodic
    r.clock.now = S
    assert r.get(RTC_REG_C) == 0x10
    assert not r.irq.level


def test_alarm_exact_time() -> None:
    r = Rtc()
    r.set(RTC_REG_A, 0x20)
    r.set(RTC_HOURS_ALARM, 0x13)
    r.set(RTC_MINUTES_ALARM, 0x45)
    r.set(RTC_SECONDS_ALARM, 0x35)
    r.set(RTC_REG_B, 0x22)                # AIE
    fired_at = None
    while fired_at is None:
        dl = r.dev.next_deadline()
        r.clock.now = dl
        r.dev.tick(dl)
        if r.irq.level:
            fired_at = dl
        else:
            r.get(RTC_REG_C)              # drop UF
    assert fired_at == 5 * S
    assert r.get(RTC_REG_C) == 0xB0       # IRQF | AF | UF
    assert r.get(RTC_SECONDS) == 0x35


def test_alarm_dont_care_every_minute_and_every_second() -> None:
    r = Rtc()
    r.set(RTC_REG_A, 0x20)
    r.set(RTC_HOURS_ALARM, 0xFF)
    r.set(RTC_MINUTES_ALARM, 0xC0)
    r.set(RTC_SECONDS_ALARM, 0x00)
    r.set(RTC_REG_B, 0x22)
    assert r.run_deadlines(300 * S) == 5  # 13:46:00, 13:47:00, ... 13:50:00
    r.set(RTC_SECONDS_ALARM, 0xC5)
    assert r.run_deadlines(310 * S) == 10  # every second


def test_alarm_flag_is_found_lazily_after_a_long_gap() -> None:
    r = Rtc()
    r.set(RTC_REG_A, 0x20)
    r.set(RTC_HOURS_ALARM, 0x13)
    r.set(RTC_MINUTES_ALARM, 0x46)
    r.set(RTC_SECONDS_ALARM, 0x00)
    r.clock.now = 29 * S
    assert r.get(RTC_REG_C) == 0x10       # 13:45:59: no alarm yet
    r.clock.now = 100 * S
    assert r.get(RTC_REG_C) == 0x30
    r.set(RTC_HOURS_ALARM, 0x10)
    r.clock.now = 3 * 3600 * S
    assert r.get(RTC_REG_C) == 0x10       # 10:46 is not within 13:47 .. 16:45
    r.clock.now = 30 * 3600 * S
    assert r.get(RTC_REG_C) == 0x30       # a day went by: matched


def test_alarm_in_12_hour_mode_and_impossible_alarm() -> None:
    r = Rtc(base=dt.datetime(2024, 3, 15, 13, 59, 58))
    r.set(RTC_REG_A, 0x20)
    r.set(RTC_REG_B, 0x20)                # AIE, 12-hour, BCD
    r.set(RTC_HOURS_ALARM, 0x82)          # 2 PM
    r.set(RTC_MINUTES_ALARM, 0x00)
    r.set(RTC_SECONDS_ALARM, 0x00)
    r.clock.now = 2 * S
    assert r.get(RTC_REG_C) & 0x20
    r.set(RTC_MINUTES_ALARM, 0x60)        # no such minute
    r.clock.now = 2 * 86400 * S
    assert not r.get(RTC_REG_C) & 0x20


# ---- the memory-size bytes -------------------------------------------------------------------
def test_cmos_memory_bytes_small_machine() -> None:
    m = cmos_memory_bytes(512 * MIB, 0)
    assert (m[0x15], m[0x16]) == (0x80, 0x02)          # 640 KiB
    assert (m[0x17], m[0x18]) == (0xFF, 0xFF)          # 511 MiB in KiB, capped
    assert (m[0x30], m[0x31]) == (0xFF, 0xFF)
    assert (m[0x34], m[0x35]) == (0x00, 0x1F)          # 496 MiB / 64 KiB = 7936
    assert (m[0x5B], m[0x5C], m[0x5D]) == (0, 0, 0)


def test_cmos_memory_bytes_large_and_tiny() -> None:
    m = cmos_memory_bytes(3 * 1024 * MIB, 5 * 1024 * MIB)
    assert (m[0x34], m[0x35]) == (0x00, 0xBF)          # (3 GiB - 16 MiB) / 64 KiB = 48896
    assert (m[0x5B], m[0x5C], m[0x5D]) == (0x00, 0x40, 0x01)  # 81920
    m = cmos_memory_bytes(2 * MIB, 0)
    assert (m[0x17], m[0x18]) == (0x00, 0x04)          # 1024 KiB
    assert (m[0x34], m[0x35]) == (0, 0)
    m = cmos_memory_bytes(512 * 1024, 0)
    assert (m[0x15], m[0x16]) == (0x00, 0x02)          # 512 KiB base
    assert (m[0x17], m[0x18]) == (0, 0)
    assert set(m) == {0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35, 0x5B, 0x5C, 0x5D}


def test_memory_bytes_reach_the_guest() -> None:
    r = Rtc()
    for index, value in cmos_memory_bytes(256 * MIB, 0).items():
        r.dev.set_memory(index, value)
    assert r.get(0x34) | r.get(0x35) << 8 == (256 - 16) * 16


# ---- calendar helpers ------------------------------------------------------------------------
@given(st.integers(-800_000, 3_000_000))
def test_calendar_helpers_round_trip(days: int) -> None:
    y, m, d = civil_from_days(days)
    assert days_from_civil(y, m, d) == days
    if 1 <= y <= 9999:
        assert dt.date(1970, 1, 1) + dt.timedelta(days=days) == dt.date(y, m, d)


def test_default_base_is_now_and_aware_base_is_converted() -> None:
    def utc_now() -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)

    before = utc_now().replace(microsecond=0)  # the RTC counts whole seconds
    dev = MC146818()
    guest = dev.guest_time()
    assert before <= guest <= utc_now()  # the host's time when it was made, whatever the delay
    tz = dt.timezone(dt.timedelta(hours=2))
    r = Rtc(base=dt.datetime(2024, 1, 1, 1, 0, 0, tzinfo=tz))
    assert r.dev.guest_time() == dt.datetime(2023, 12, 31, 23, 0, 0)


def test_concurrent_access() -> None:
    dev = MC146818(irq=RecordingIrqLine())

    def guest() -> None:
        buf = bytearray(1)
        for i in range(1000):
            dev.write(0, bytes([i % 14]))
            dev.read(1, memoryview(buf))

    def timer() -> None:
        for _ in range(1000):
            dl = dev.next_deadline()
            if dl is not None:
                dev.tick(dl)

    threads = [threading.Thread(target=guest) for _ in range(3)] + [threading.Thread(target=timer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---- random traffic --------------------------------------------------------------------------
_op = st.one_of(
    st.tuples(st.just("idx"), st.integers(0, 255)),
    st.tuples(st.just("w"), st.integers(0, 255)),
    st.tuples(st.just("r"), st.integers(-1, 3)),
    st.tuples(st.just("raw"), st.binary(max_size=3)),
    st.tuples(st.just("t"), st.integers(0, 3 * S)),
    st.tuples(st.just("tick"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2199, 12, 31)),
    st.lists(_op, max_size=60),
)
def test_random_register_traffic_never_raises(base: dt.datetime, ops: list[tuple]) -> None:
    r = Rtc(base=base)
    for kind, arg in ops:
        if kind == "idx":
            r.dev.write(0, bytes([arg]))
        elif kind == "w":
            r.dev.write(1, bytes([arg]))
        elif kind == "r":
            buf = bytearray(2)
            r.dev.read(arg, memoryview(buf))
        elif kind == "raw":
            r.dev.write(0, arg)
        elif kind == "t":
            r.clock.now += arg
        else:
            dl = r.dev.next_deadline()
            if dl is not None:
                r.clock.now = max(r.clock.now, dl)
                r.dev.tick(dl)
        # Invariants: the line follows IRQF; IRQF is exactly "a flag with its enable";
        # Register D is constant; a deadline is never in the past.
        c = r.dev.get_memory(RTC_REG_C)
        b = r.dev.get_memory(RTC_REG_B)
        assert r.irq.level == r.dev.irq_level == bool(c & 0x80)
        assert bool(c & 0x80) == bool(c & b & 0x70)
        dl = r.dev.next_deadline()
        assert dl is None or dl > r.clock.now
        r.dev.guest_time()
    saved = r.dev.get_memory(0)
    assert r.get(RTC_REG_D) == 0x80
    assert 0 <= saved <= 0xFF
