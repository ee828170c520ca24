"""The 8254 against its datasheet with a fake clock and a recording IRQ line, without KVM."""
from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from microvm.api import RecordingIrqLine

from microvm_pit_i8254.device import (
    CONTROL,
    PIT_HZ,
    PORT61_GATE2,
    PORT61_OUT2,
    PORT61_REFRESH,
    PORT61_SPKR_DATA,
    REFRESH_HALF_PERIOD_NS,
    I8254,
    Port61,
    ns_of_tick,
    ticks_at,
)


class FakeClock:
    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def at_tick(self, tick: int) -> None:
        self.now = ns_of_tick(tick)


class Pit:
    def __init__(self, start_tick: int = 0) -> None:
        self.clock = FakeClock()
        self.clock.at_tick(start_tick)
        self.irq = RecordingIrqLine(gsi=0)
        self.kicks = 0
        self.dev = I8254(irq=self.irq, clock=self.clock, on_timer_change=self._kick)
        self.port61 = Port61(self.dev)
        self.t0 = start_tick

    def _kick(self) -> None:
        self.kicks += 1

    def at(self, d: int) -> None:
        """Move the clock to ``d`` pulses after the start tick."""
        self.clock.at_tick(self.t0 + d)

    def out(self, offset: int, value: int) -> None:
        self.dev.write(offset, bytes([value]))

    def inb(self, offset: int) -> int:
        buf = bytearray(1)
        self.dev.read(offset, memoryview(buf))
        return buf[0]

    def program(self, counter: int, mode: int, count: int, rw: int = 3, bcd: bool = False) -> None:
        self.out(CONTROL, counter << 6 | rw << 4 | mode << 1 | int(bcd))
        if rw in (1, 3):
            self.out(counter, count & 0xFF)
        if rw in (2, 3):
            self.out(counter, (count >> 8) & 0xFF)

    def read16(self, counter: int) -> int:
        lo = self.inb(counter)
        hi = self.inb(counter)
        return hi << 8 | lo

    def latch(self, counter: int) -> None:
        self.out(CONTROL, counter << 6)

    def read_back(self, counters: int, count: bool = True, status: bool = True) -> None:
        self.out(CONTROL, 0xC0 | (0 if count else 0x20) | (0 if status else 0x10) | counters << 1)

    def p61(self) -> int:
        buf = bytearray(1)
        self.port61.read(0, memoryview(buf))
        return buf[0]


def test_tick_conversion_is_exact_and_inverse() -> None:
    assert ticks_at(10**9) == PIT_HZ
    for t in (0, 1, 2, 1000, PIT_HZ, 123456789):
        assert ticks_at(ns_of_tick(t)) == t
        assert ticks_at(ns_of_tick(t) - 1) == t - 1


def test_power_on_state() -> None:
    p = Pit()
    assert not p.dev.out(0)
    assert p.dev.next_deadline() is None
    assert p.inb(CONTROL) == 0   # write-only


# ---- mode 0: interrupt on terminal count -----------------------------------------------------
def test_mode0_counts_down_and_out_rises_at_terminal_count() -> None:
    p = Pit(start_tick=500)
    p.program(0, 0, 1000)
    assert not p.dev.out(0)
    assert p.read16(0) == 1000
    p.at(1)
    assert p.read16(0) == 999
    p.at(999)
    assert p.read16(0) == 1 and not p.dev.out(0)
    p.at(1000)
    assert p.read16(0) == 0 and p.dev.out(0)
    p.at(1001)
    assert p.read16(0) == 0xFFFF and p.dev.out(0)   # keeps counting, OUT stays high


def test_mode0_irq_is_one_shot() -> None:
    p = Pit(start_tick=7)
    p.program(0, 0, 100)
    deadline = p.dev.next_deadline()
    assert deadline == ns_of_tick(7 + 100)
    p.dev.tick(deadline - 1)
    assert p.irq.pulses == 0
    p.dev.tick(deadline)
    assert p.irq.pulses == 1
    assert p.dev.next_deadline() is None
    p.dev.tick(deadline + 10**9)
    assert p.irq.pulses == 1


def test_mode0_first_byte_stops_counting() -> None:
    p = Pit()
    p.program(0, 0, 10)
    p.at(20)
    assert p.dev.out(0)
    p.out(0, 0x34)             # LSB of a new count: counting stops, OUT low
    assert not p.dev.out(0)
    assert p.dev.next_deadline() is None
    p.at(25)
    p.out(0, 0x00)             # MSB: a count of 0x34 starts now
    p.at(25 + 0x33)
    assert not p.dev.out(0)
    p.at(25 + 0x34)
    assert p.dev.out(0)


def test_mode0_gate_low_suspends_counting() -> None:
    p = Pit()
    p.port61.write(0, bytes([PORT61_GATE2]))
    p.program(2, 0, 100)
    p.at(40)
    p.port61.write(0, bytes([0]))   # gate low at 40
    p.at(500)
    assert p.read16(2) == 60 and not p.dev.out(2)
    p.port61.write(0, bytes([PORT61_GATE2]))
    p.at(559)
    assert p.read16(2) == 1
    p.at(560)
    assert p.dev.out(2)


def test_mode0_count_written_with_gate_low_waits_for_gate() -> None:
    p = Pit()
    p.program(2, 0, 10)         # gate 2 is low after reset (port 0x61 = 0)
    p.at(100)
    assert p.read16(2) == 10 and not p.dev.out(2)
    p.port61.write(0, bytes([PORT61_GATE2]))
    p.at(110)
    assert p.dev.out(2)


# ---- mode 1: hardware retriggerable one-shot -------------------------------------------------
def test_mode1_one_shot_on_gate_trigger_and_retrigger() -> None:
    p = Pit()
    p.program(2, 1, 50)
    assert p.dev.out(2)               # high until triggered
    p.at(10)
    assert p.dev.out(2) and p.read16(2) == 50
    p.port61.write(0, bytes([PORT61_GATE2]))   # trigger at 10
    assert not p.dev.out(2)
    p.at(40)
    assert p.read16(2) == 20
    p.port61.write(0, bytes([0]))     # gate low does not stop mode 1
    p.port61.write(0, bytes([PORT61_GATE2]))   # retrigger at 40
    p.at(89)
    assert not p.dev.out(2) and p.read16(2) == 1
    p.at(90)
    assert p.dev.out(2)


def test_mode1_new_count_waits_for_next_trigger() -> None:
    p = Pit()
    p.program(2, 1, 50)
    p.port61.write(0, bytes([PORT61_GATE2]))
    p.at(5)
    p.out(2, 10)
    p.out(2, 0)                       # count 10 written during the one-shot
    p.at(49)
    assert not p.dev.out(2)           # still the old count of 50
    p.at(50)
    assert p.dev.out(2)
    p.port61.write(0, bytes([0]))
    p.at(60)
    p.port61.write(0, bytes([PORT61_GATE2]))
    p.at(69)
    assert not p.dev.out(2)
    p.at(70)
    assert p.dev.out(2)


# ---- mode 2: rate generator ------------------------------------------------------------------
def test_mode2_rate_generator_counts_and_out() -> None:
    p = Pit()
    p.program(0, 2, 5)
    values, outs = [], []
    for d in range(11):
        p.at(d)
        values.append(p.read16(0))
        outs.append(p.dev.out(0))
    assert values == [5, 4, 3, 2, 1, 5, 4, 3, 2, 1, 5]
    assert outs == [True, True, True, True, False, True, True, True, True, False, True]


def test_mode2_periodic_irq_and_coalescing() -> None:
    p = Pit(start_tick=3)
    p.program(0, 2, 1000)
    deadlines = []
    for _ in range(5):
        dl = p.dev.next_deadline()
        deadlines.append(dl)
        p.clock.now = dl
        p.dev.tick(dl)
    assert deadlines == [ns_of_tick(3 + 1000 * k) for k in range(1, 6)]
    assert p.irq.pulses == 5
    # A timer thread three and a half periods late gets one pulse for them.
    late = ns_of_tick(3 + 8500)
    p.dev.tick(late)
    assert p.irq.pulses == 6
    assert p.dev.irq0_coalesced == 2
    assert p.dev.next_deadline() == ns_of_tick(3 + 9000)


def test_linux_periodic_tick_programming() -> None:
    """Linux's pit_set_periodic: 0x34 then LATCH = (1193182 + HZ/2) / HZ, LSB then MSB."""
    p = Pit()
    latch = (PIT_HZ + 125) // 250
    p.out(CONTROL, 0x34)
    p.out(0, latch & 0xFF)
    p.out(0, latch >> 8)
    assert p.dev.mode(0) == 2
    count = 0
    while True:
        dl = p.dev.next_deadline()
        if dl > ns_of_tick(250 * latch):
            break
        p.dev.tick(dl)
        count += 1
    assert count == 250
    assert p.irq.pulses == 250


def test_gate_low_forces_out_high_and_rising_edge_reloads_in_mode2() -> None:
    p = Pit()
    p.port61.write(0, bytes([PORT61_GATE2]))
    p.program(2, 2, 10)
    p.at(9)
    assert not p.dev.out(2)
    p.port61.write(0, bytes([0]))
    assert p.dev.out(2)
    p.at(100)
    assert p.read16(2) == 1           # frozen
    p.port61.write(0, bytes([PORT61_GATE2]))   # reload
    assert p.read16(2) == 10
    p.at(109)
    assert not p.dev.out(2)


# ---- mode 3: square wave ---------------------------------------------------------------------
def test_mode3_even_count() -> None:
    p = Pit()
    p.program(0, 3, 6)
    values, outs = [], []
    for d in range(13):
        p.at(d)
        values.append(p.read16(0))
        outs.append(p.dev.out(0))
    assert values == [6, 4, 2, 6, 4, 2, 6, 4, 2, 6, 4, 2, 6]
    assert outs == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3 + [True]


def test_mode3_odd_count_is_high_one_pulse_longer() -> None:
    p = Pit()
    p.program(0, 3, 5)
    values, outs = [], []
    for d in range(10):
        p.at(d)
        values.append(p.read16(0))
        outs.append(p.dev.out(0))
    assert values == [4, 2, 0, 4, 2, 4, 2, 0, 4, 2]
    assert outs == [True, True, True, False, False] * 2


def test_mode3_seabios_18_2_hz_irq() -> None:
    """SeaBIOS: 0x36 (counter 0, LSB/MSB, mode 3, binary) and a count of 0 (65536)."""
    p = Pit()
    p.out(CONTROL, 0x36)
    p.out(0, 0)
    p.out(0, 0)
    assert p.dev.next_deadline() == ns_of_tick(65536)
    n = 0
    while (dl := p.dev.next_deadline()) <= 10**9:
        p.dev.tick(dl)
        n += 1
    assert n == PIT_HZ // 65536 == 18


# ---- modes 4 and 5: strobes ------------------------------------------------------------------
def test_mode4_software_strobe() -> None:
    p = Pit()
    p.program(0, 4, 3)
    outs = []
    for d in range(6):
        p.at(d)
        outs.append(p.dev.out(0))
    assert outs == [True, True, True, False, True, True]
    # OUT rises again after the one-pulse strobe: that edge is the interrupt, once.
    assert p.dev.next_deadline() == ns_of_tick(4)
    p.dev.tick(ns_of_tick(4))
    assert p.irq.pulses == 1 and p.dev.next_deadline() is None


def test_linux_oneshot_programming_uses_mode4() -> None:
    """Linux's pit_set_oneshot writes 0x38, then pit_next_event writes the delta LSB, MSB."""
    p = Pit(start_tick=1000)
    p.out(CONTROL, 0x38)
    p.out(0, 0x10)
    p.out(0, 0x27)   # 10000
    assert p.dev.next_deadline() == ns_of_tick(1000 + 10001)


def test_mode5_hardware_strobe() -> None:
    p = Pit()
    p.program(2, 5, 4)
    p.at(10)
    assert p.dev.out(2)
    p.port61.write(0, bytes([PORT61_GATE2]))   # trigger at 10
    outs = []
    for d in range(10, 17):
        p.at(d)
        outs.append(p.dev.out(2))
    assert outs == [True, True, True, True, False, True, True]


def test_modes_6_and_7_alias_2_and_3() -> None:
    p = Pit()
    p.program(0, 6, 5)
    assert p.dev.mode(0) == 2
    p.read_back(1, count=False)
    assert (p.inb(0) >> 1) & 7 == 6   # the status shows the bits as programmed
    p.program(1, 7, 5)
    assert p.dev.mode(1) == 3


# ---- access modes, latch, read-back ----------------------------------------------------------
def test_lsb_only_and_msb_only_access() -> None:
    p = Pit()
    p.program(1, 2, 0x80, rw=1)       # LSB only: count 0x0080
    assert p.inb(1) == 0x80
    p.at(1)
    assert p.inb(1) == 0x7F
    p.program(1, 2, 0x1200, rw=2)     # MSB only: count 0x1200
    assert p.inb(1) == 0x12
    p.at(1 + 0x101)
    assert p.inb(1) == 0x10


def test_lsb_msb_read_flip_flop_and_control_word_resets_it() -> None:
    p = Pit()
    p.program(0, 0, 0x1234)
    assert p.inb(0) == 0x34
    p.program(0, 0, 0x5678)           # control word resets the flip-flop
    assert p.inb(0) == 0x78
    assert p.inb(0) == 0x56


def test_counter_latch_freezes_value_until_read() -> None:
    p = Pit()
    p.program(0, 2, 1000)
    p.at(100)
    p.latch(0)
    p.at(300)
    p.latch(0)                        # ignored: the first latch is unread
    assert p.read16(0) == 900
    assert p.read16(0) == 700         # latch released: live again


def test_latch_in_lsb_mode_reads_one_byte() -> None:
    p = Pit()
    p.program(0, 0, 0x40, rw=1)
    p.at(1)
    p.latch(0)
    p.at(5)
    assert p.inb(0) == 0x3F
    assert p.inb(0) == 0x3B


def test_read_back_status_and_count() -> None:
    p = Pit()
    p.out(CONTROL, 0x34)              # counter 0: LSB/MSB, mode 2
    p.read_back(0b001, count=False)
    st0 = p.inb(0)
    assert st0 == 0x40 | 0x80 | 0x30 | 0x04   # NULL COUNT, OUT high, RW=11, mode 2
    p.out(0, 100)
    p.out(0, 0)
    p.at(10)
    p.read_back(0b001)                # count and status
    p.at(50)
    assert p.inb(0) == 0x80 | 0x30 | 0x04     # status first, NULL COUNT now 0
    assert p.read16(0) == 90          # then the count latched at 10
    assert p.read16(0) == 50


def test_read_back_several_counters_and_status_latch_is_sticky() -> None:
    p = Pit()
    p.port61.write(0, bytes([PORT61_GATE2]))
    p.program(0, 0, 500)
    p.program(1, 3, 0x1000, bcd=False)
    p.program(2, 4, 0x20, rw=1, bcd=True)
    p.at(3)
    p.read_back(0b111, count=False)
    p.at(4)
    p.read_back(0b111, count=False)   # ignored: statuses not yet read
    assert p.inb(0) == 0x30           # OUT low, RW 11, mode 0, binary
    assert p.inb(1) == 0x80 | 0x30 | 0x06
    assert p.inb(2) == 0x80 | 0x10 | 0x08 | 0x01
    p.read_back(0b110, status=False)  # counts of counters 1 and 2 latched at 4
    p.at(20)
    assert p.read16(1) == 0x1000 - 8  # mode 3 counts by two
    assert p.inb(2) == 0x16           # BCD 20 - 4
    assert p.read16(0) == 480         # counter 0 was not latched


def test_status_out_bit_follows_clock() -> None:
    p = Pit()
    p.program(0, 0, 5)
    p.read_back(1, count=False)
    assert not p.inb(0) & 0x80
    p.at(5)
    p.read_back(1, count=False)
    assert p.inb(0) & 0x80


def test_bcd_counting() -> None:
    p = Pit()
    p.program(0, 0, 0x1000, bcd=True)   # 1000 decimal
    p.at(1)
    assert p.read16(0) == 0x0999
    p.at(1000)
    assert p.read16(0) == 0 and p.dev.out(0)
    p.at(1001)
    assert p.read16(0) == 0x9999        # wraps within four decades
    p.program(0, 0, 0, bcd=True)        # 0 means 10000 in BCD
    p.at(1001 + 1)
    assert p.read16(0) == 0x9999
    assert p.dev.next_deadline() == ns_of_tick(1001 + 10000)


def test_bcd_mode2_period() -> None:
    p = Pit()
    p.program(0, 2, 0x0100, bcd=True)   # 100 decimal
    assert p.dev.next_deadline() == ns_of_tick(100)


def test_binary_count_zero_is_65536() -> None:
    p = Pit()
    p.program(0, 0, 0)
    p.at(1)
    assert p.read16(0) == 0xFFFF
    assert p.dev.next_deadline() == ns_of_tick(65536)


# ---- port 0x61 -------------------------------------------------------------------------------
def test_port61_bits() -> None:
    p = Pit()
    assert p.p61() & 0x0F == 0
    p.port61.write(0, bytes([0xFF]))
    value = p.p61()
    assert value & 0x0F == 0x0F
    assert value & 0xC0 == 0
    assert p.dev.gate(2)
    assert p.port61.speaker_enabled
    p.port61.write(0, bytes([PORT61_SPKR_DATA]))
    assert not p.dev.gate(2)


def test_port61_refresh_toggles_with_the_clock() -> None:
    p = Pit()
    seen = set()
    for k in range(4):
        p.clock.now = k * REFRESH_HALF_PERIOD_NS
        seen.add(p.p61() & PORT61_REFRESH)
    assert seen == {0, PORT61_REFRESH}
    p.clock.now = 0
    assert p.p61() & PORT61_REFRESH == p.p61() & PORT61_REFRESH   # stable at a fixed time


def test_linux_pit_calibrate_tsc_sequence() -> None:
    """arch/x86/kernel/tsc.c pit_calibrate_tsc(): gate on, speaker off, mode 0 on counter
    2 with a 10 ms latch, then poll port 0x61 bit 5 until OUT2 rises."""
    p = Pit(start_tick=12345)
    latch = PIT_HZ // (1000 // 10)
    p.port61.write(0, bytes([(p.p61() & ~0x02) | 0x01]))
    p.out(CONTROL, 0xB0)
    p.out(2, latch & 0xFF)
    p.out(2, latch >> 8)
    start = p.clock.now
    polls = 0
    while not p.p61() & PORT61_OUT2:
        p.clock.now += 7_000          # each poll costs 7 us of real time
        polls += 1
    elapsed = p.clock.now - start
    assert 10_000_000 - 7_000 <= elapsed <= 10_000_000 + 7_000
    assert polls > 1000


def test_linux_quick_pit_calibrate_msb_reads() -> None:
    """quick_pit_calibrate(): mode 0, count 0xffff, then reads LSB and MSB of counter 2
    and expects the MSB to step down by one every 256 pulses."""
    p = Pit()
    p.port61.write(0, bytes([0x01]))
    p.out(CONTROL, 0xB0)
    p.out(2, 0xFF)
    p.out(2, 0xFF)
    for i in range(1, 20):
        p.at(256 * i + 10)
        p.inb(2)
        assert p.inb(2) == 0xFF - i


# ---- bus behaviour and plumbing --------------------------------------------------------------
def test_wide_accesses_split_into_bytes() -> None:
    p = Pit()
    p.dev.write(CONTROL, bytes([0x34, 0x00]))   # second byte falls outside: ignored
    p.dev.write(0, bytes([0x10, 0x00]))         # bytes to counters 0 and 1
    buf = bytearray(4)
    p.dev.read(0, memoryview(buf))
    assert buf[3] == 0


def test_on_timer_change_kicks_for_counter0_only() -> None:
    p = Pit()
    p.program(2, 0, 10)
    assert p.kicks == 0
    p.program(0, 2, 10)
    assert p.kicks >= 1


def test_no_irq_line_means_no_deadline() -> None:
    clock = FakeClock()
    dev = I8254(clock=clock)
    dev.write(CONTROL, bytes([0x34]))
    dev.write(0, bytes([10, 0]))
    assert dev.next_deadline() is None
    dev.tick(10**9)


def test_real_clock_default_and_threads() -> None:
    dev = I8254(irq=RecordingIrqLine())
    dev.write(CONTROL, bytes([0x34]))
    dev.write(0, bytes([0xFF, 0xFF]))

    def hammer() -> None:
        buf = bytearray(1)
        for _ in range(2000):
            dev.read(0, memoryview(buf))
            dev.write(CONTROL, bytes([0x00]))
            dl = dev.next_deadline()
            if dl is not None:
                dev.tick(dl)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---- random traffic --------------------------------------------------------------------------
_op = st.one_of(
    st.tuples(st.just("w"), st.integers(-2, 6), st.binary(min_size=0, max_size=3)),
    st.tuples(st.just("r"), st.integers(-2, 6), st.integers(0, 4)),
    st.tuples(st.just("t"), st.integers(0, 200_000), st.just(0)),
    st.tuples(st.just("g"), st.integers(-1, 3), st.booleans()),
    st.tuples(st.just("p61"), st.integers(0, 255), st.just(0)),
    st.tuples(st.just("tick"), st.just(0), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=60))
def test_random_register_traffic_never_raises(ops: list[tuple]) -> None:
    p = Pit()
    last_deadline_done = -1
    for kind, a, b in ops:
        if kind == "w":
            p.dev.write(a, b)
        elif kind == "r":
            buf = bytearray(b)
            p.dev.read(a, memoryview(buf))
        elif kind == "t":
            p.clock.now += a
        elif kind == "g":
            p.dev.set_gate(a, b)
        elif kind == "p61":
            p.port61.write(0, bytes([a]))
        else:
            dl = p.dev.next_deadline()
            if dl is not None:
                # A deadline is always in the future of what was already reported.
                assert dl > last_deadline_done
                p.clock.now = max(p.clock.now, dl)
                p.dev.tick(dl)
                last_deadline_done = dl
                nxt = p.dev.next_deadline()
                assert nxt is None or nxt > dl
        for c in range(3):
            v = p.dev.counter_value(c)
            assert 0 <= v <= 0xFFFF
            if p.dev._counters[c].bcd:
                assert all((v >> s) & 0xF <= 9 for s in (0, 4, 8, 12))
            assert 0 <= p.dev.mode(c) <= 5
        assert p.p61() & 0xC0 == 0
