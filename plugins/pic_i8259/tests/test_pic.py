"""The 8259A pair against the datasheet and the sequences Linux and SeaBIOS use, without KVM."""
from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from microvm.api import RecordingIrqLine

from microvm_pic_i8259.device import I8259, PicPair


class Pics:
    def __init__(self) -> None:
        self.intr = RecordingIrqLine(gsi=0)
        self.pair = PicPair(self.intr)

    # port helpers: "m"/"s" chip, offset 0/1
    def out(self, chip: str, offset: int, value: int) -> None:
        dev = {"m": self.pair.master, "s": self.pair.slave, "e": self.pair.elcr}[chip]
        dev.write(offset, bytes([value]))

    def inb(self, chip: str, offset: int) -> int:
        dev = {"m": self.pair.master, "s": self.pair.slave, "e": self.pair.elcr}[chip]
        buf = bytearray(1)
        dev.read(offset, memoryview(buf))
        return buf[0]

    def linux_init(self, auto_eoi: bool = False) -> None:
        """arch/x86/kernel/i8259.c init_8259A()."""
        self.out("m", 1, 0xFF)
        self.out("s", 1, 0xFF)
        self.out("m", 0, 0x11)                       # ICW1: edge, cascade, ICW4
        self.out("m", 1, 0x30)                       # ICW2: vectors 0x30-0x37
        self.out("m", 1, 0x04)                       # ICW3: slave on IR2
        self.out("m", 1, 0x03 if auto_eoi else 0x01)  # ICW4: 8086 mode
        self.out("s", 0, 0x11)
        self.out("s", 1, 0x38)                       # vectors 0x38-0x3f
        self.out("s", 1, 0x02)                       # slave ID 2
        self.out("s", 1, 0x01)
        self.out("m", 1, 0x00)                       # unmask everything
        self.out("s", 1, 0x00)

    def isr(self, chip: str) -> int:
        self.out(chip, 0, 0x0B)
        return self.inb(chip, 0)

    def irr(self, chip: str) -> int:
        self.out(chip, 0, 0x0A)
        return self.inb(chip, 0)

    def pulse(self, irq: int) -> None:
        self.pair.set_irq(irq, True)
        self.pair.set_irq(irq, False)

    def linux_eoi(self, irq: int) -> None:
        """mask_and_ack_8259A's specific EOIs (slave first, then the cascade on the master)."""
        if irq >= 8:
            self.out("s", 0, 0x60 + (irq & 7))
            self.out("m", 0, 0x62)
        else:
            self.out("m", 0, 0x60 + irq)


def test_linux_init_sequence_and_vectors() -> None:
    p = Pics()
    p.linux_init()
    assert p.pair.master.irq_base == 0x30 and p.pair.slave.irq_base == 0x38
    assert p.pair.master.init_state == 0 and p.pair.slave.init_state == 0
    assert p.pair.master.icw3 == 0x04 and p.pair.slave.icw3 == 0x02
    assert not p.intr.level
    p.pulse(1)
    assert p.intr.level and p.pair.has_interrupt()
    assert p.pair.acknowledge() == 0x31
    assert not p.intr.level
    assert p.isr("m") == 0x02
    p.linux_eoi(1)
    assert p.isr("m") == 0


def test_imr_reads_back_and_masks() -> None:
    p = Pics()
    p.linux_init()
    p.out("m", 1, 0xFB)          # Linux's cached mask: all but the cascade
    assert p.inb("m", 1) == 0xFB
    p.pulse(4)
    assert not p.intr.level      # masked: request latched in IRR, not delivered
    assert p.irr("m") & 0x10
    p.out("m", 1, 0xEB)          # unmask IRQ 4
    assert p.intr.level
    assert p.pair.acknowledge() == 0x34


def test_icw1_resets_imr_isr_and_keeps_elcr() -> None:
    p = Pics()
    p.linux_init()
    p.out("e", 1, 0x02)          # IRQ 9 level
    p.pulse(3)
    p.pair.acknowledge()
    p.out("m", 1, 0x55)
    p.out("m", 0, 0x11)
    assert p.inb("m", 1) == 0
    assert p.isr("m") == 0
    assert p.inb("e", 1) == 0x02


def test_priority_and_nesting() -> None:
    p = Pics()
    p.linux_init()
    p.pulse(3)
    p.pulse(1)
    assert p.pair.acknowledge() == 0x31     # IRQ 1 beats IRQ 3
    assert not p.intr.level                  # IRQ 3 is lower than the one in service
    p.pulse(0)
    assert p.intr.level                      # IRQ 0 is higher: nests
    assert p.pair.acknowledge() == 0x30
    assert p.isr("m") == 0x03
    p.out("m", 0, 0x20)                      # non-specific EOI: clears the highest (IRQ 0)
    assert p.isr("m") == 0x02
    assert not p.intr.level
    p.out("m", 0, 0x20)
    assert p.intr.level
    assert p.pair.acknowledge() == 0x33


def test_specific_eoi() -> None:
    p = Pics()
    p.linux_init()
    p.pulse(5)
    p.pulse(6)
    p.pair.acknowledge()
    p.out("m", 0, 0x20)
    p.pair.acknowledge()
    assert p.isr("m") == 0x40
    p.out("m", 0, 0x65)                      # specific EOI of an IRQ not in service: harmless
    assert p.isr("m") == 0x40
    p.out("m", 0, 0x66)
    assert p.isr("m") == 0


def test_cascade_through_ir2() -> None:
    p = Pics()
    p.linux_init()
    p.pulse(12)
    assert p.intr.level
    assert p.irr("m") & 0x04
    assert p.pair.acknowledge() == 0x3C
    assert p.isr("m") == 0x04 and p.isr("s") == 0x10
    assert not p.intr.level
    p.pulse(9)                               # higher priority on the slave, but master ISR2 blocks
    assert not p.intr.level
    p.linux_eoi(12)
    assert p.intr.level
    assert p.pair.acknowledge() == 0x39
    p.linux_eoi(9)
    assert p.isr("m") == 0 and p.isr("s") == 0
    assert not p.pair.has_interrupt()


def test_cascade_keeps_a_pending_slave_request() -> None:
    """Two slave requests at once: the second is delivered after the first's EOI."""
    p = Pics()
    p.linux_init()
    p.pulse(14)
    p.pulse(10)
    assert p.pair.acknowledge() == 0x3A
    p.linux_eoi(10)
    assert p.pair.acknowledge() == 0x3E
    p.linux_eoi(14)
    assert not p.pair.has_interrupt()


def test_slave_mask_and_master_cascade_mask() -> None:
    p = Pics()
    p.linux_init()
    p.out("m", 1, 0x04)                      # cascade masked
    p.pulse(8)
    assert not p.intr.level
    p.out("m", 1, 0x00)
    assert p.intr.level
    p.out("s", 1, 0x01)                      # mask IRQ 8 at the slave
    assert not p.intr.level


def test_spurious_irq7() -> None:
    p = Pics()
    p.linux_init()
    assert p.pair.acknowledge() == 0x37
    assert p.isr("m") == 0
    # A request masked between INTR and INTA is the classic cause.
    p.pulse(5)
    p.out("m", 1, 0x20)
    assert p.pair.acknowledge() == 0x37
    assert p.isr("m") == 0


def test_spurious_irq15() -> None:
    """The master picks IR2 but the slave has nothing: vector of IRQ 15, master ISR2 only."""
    p = Pics()
    p.linux_init()
    p.pair.master.set_irq(2, True)           # the slave's INT pin glitching high
    assert p.pair.acknowledge() == 0x3F
    assert p.isr("m") == 0x04 and p.isr("s") == 0


def test_edge_triggered_needs_a_new_edge() -> None:
    p = Pics()
    p.linux_init()
    p.pair.set_irq(4, True)
    assert p.pair.acknowledge() == 0x34
    p.linux_eoi(4)
    assert not p.pair.has_interrupt()        # still high, no new edge
    p.pair.set_irq(4, False)
    p.pair.set_irq(4, True)
    assert p.pair.has_interrupt()


def test_level_triggered_via_elcr() -> None:
    p = Pics()
    p.linux_init()
    p.out("e", 1, 0x02)                      # IRQ 9 level triggered
    p.pair.set_irq(9, True)
    assert p.pair.acknowledge() == 0x39
    assert p.irr("s") & 0x02                 # level requests stay in IRR
    p.linux_eoi(9)
    assert p.pair.has_interrupt()            # still asserted: interrupts again
    assert p.pair.acknowledge() == 0x39
    p.pair.set_irq(9, False)
    p.linux_eoi(9)
    assert not p.pair.has_interrupt()
    assert not p.irr("s") & 0x02


def test_level_request_withdrawn_before_inta_is_spurious() -> None:
    p = Pics()
    p.linux_init()
    p.out("e", 0, 0x20)                      # IRQ 5 level
    p.pair.set_irq(5, True)
    assert p.intr.level
    p.pair.set_irq(5, False)
    assert not p.intr.level
    assert p.pair.acknowledge() == 0x37


def test_elcr_read_only_bits() -> None:
    p = Pics()
    p.out("e", 0, 0xFF)
    p.out("e", 1, 0xFF)
    assert p.inb("e", 0) == 0xF8             # IRQ 0, 1, 2 always edge
    assert p.inb("e", 1) == 0xDE             # IRQ 8, 13 always edge
    assert p.pair.elcr_value == 0xDEF8
    buf = bytearray(2)
    p.pair.elcr.read(0, memoryview(buf))
    assert bytes(buf) == b"\xf8\xde"


def test_ltim_makes_every_input_level_triggered() -> None:
    p = Pics()
    p.out("m", 0, 0x19)                      # ICW1 with LTIM
    p.out("m", 1, 0x20)
    p.out("m", 1, 0x04)
    p.out("m", 1, 0x01)
    p.pair.set_irq(3, True)
    assert p.pair.acknowledge() == 0x23
    p.out("m", 0, 0x20)
    assert p.pair.has_interrupt()


def test_auto_eoi() -> None:
    p = Pics()
    p.linux_init(auto_eoi=True)
    p.pulse(6)
    assert p.pair.acknowledge() == 0x36
    assert p.isr("m") == 0
    p.pulse(7)
    assert p.pair.has_interrupt()            # nothing in service blocks it


def test_rotate_on_auto_eoi() -> None:
    p = Pics()
    p.linux_init(auto_eoi=True)
    p.out("m", 0, 0x80)                      # OCW2 100: set rotate in AEOI mode
    p.pulse(1)
    assert p.pair.acknowledge() == 0x31      # IRQ 1 becomes the lowest priority
    p.pulse(1)
    p.pulse(4)
    assert p.pair.acknowledge() == 0x34
    p.out("m", 0, 0x00)                      # clear rotate in AEOI mode
    assert not p.pair.master.rotate_on_auto_eoi


def test_rotate_on_nonspecific_eoi() -> None:
    p = Pics()
    p.linux_init()
    p.pulse(3)
    assert p.pair.acknowledge() == 0x33
    p.out("m", 0, 0xA0)                      # rotate on non-specific EOI: IRQ 3 now lowest
    p.pulse(3)
    p.pulse(5)
    assert p.pair.acknowledge() == 0x35


def test_set_priority_and_rotate_specific() -> None:
    p = Pics()
    p.linux_init()
    p.out("m", 0, 0xC4)                      # set priority: IRQ 4 lowest, IRQ 5 highest
    p.pulse(0)
    p.pulse(5)
    assert p.pair.acknowledge() == 0x35
    p.out("m", 0, 0xE5)                      # rotate on specific EOI of 5: 6 becomes highest
    p.pulse(6)
    assert p.pair.acknowledge() == 0x36
    p.out("m", 0, 0x66)
    p.out("m", 0, 0x40)                      # OCW2 010: no operation
    assert p.pair.acknowledge() == 0x30


def test_ocw3_read_irr_isr_select_is_sticky() -> None:
    p = Pics()
    p.linux_init()
    p.out("m", 1, 0xFF)
    p.pulse(3)
    p.out("m", 0, 0x0A)
    assert p.inb("m", 0) == 0x08
    assert p.inb("m", 0) == 0x08             # stays on IRR
    p.out("m", 0, 0x0B)
    assert p.inb("m", 0) == 0x00
    p.out("m", 0, 0x08)                      # RR=0: selection unchanged
    assert p.inb("m", 0) == 0x00


def test_poll_command() -> None:
    p = Pics()
    p.linux_init()
    p.out("m", 1, 0xFF)                      # polled systems mask INTR at the CPU or PIC
    p.out("m", 1, 0x00)
    p.pulse(5)
    p.out("m", 0, 0x0C)                      # OCW3 poll
    assert p.inb("m", 0) == 0x85
    assert p.isr("m") == 0x20                # acknowledged by the poll read
    p.out("m", 0, 0x0C)
    assert p.inb("m", 1) == 0x00             # nothing pending (poll on either port)
    assert p.inb("m", 1) == 0x00             # poll lasts one read: this is IMR again


def test_special_mask_mode() -> None:
    p = Pics()
    p.linux_init()
    p.pulse(3)
    assert p.pair.acknowledge() == 0x33
    p.out("m", 1, 0x08)                      # mask the level in service
    p.pulse(5)
    assert not p.intr.level                  # ISR3 still blocks lower levels
    p.out("m", 0, 0x68)                      # OCW3: set special mask mode
    assert p.pair.master.special_mask
    assert p.intr.level
    assert p.pair.acknowledge() == 0x35
    p.out("m", 0, 0x48)                      # reset special mask mode
    assert not p.pair.master.special_mask


def test_special_fully_nested_mode_lets_slave_nest() -> None:
    p = Pics()
    p.linux_init()
    p.out("m", 0, 0x11)
    p.out("m", 1, 0x30)
    p.out("m", 1, 0x04)
    p.out("m", 1, 0x11)                      # ICW4 with SFNM
    p.pulse(12)
    assert p.pair.acknowledge() == 0x3C
    p.pulse(9)                               # higher on the slave: allowed to nest
    assert p.intr.level
    assert p.pair.acknowledge() == 0x39


def test_single_mode_skips_icw3() -> None:
    chip_out = RecordingIrqLine()
    pic = I8259(chip_out)
    pic.write(0, bytes([0x13]))              # ICW1: single, ICW4 needed
    pic.write(1, bytes([0x48]))              # ICW2
    pic.write(1, bytes([0x01]))              # ICW4 (no ICW3)
    assert pic.init_state == 0
    pic.write(1, bytes([0x01]))              # OCW1: mask IR0
    buf = bytearray(1)
    pic.read(1, memoryview(buf))
    assert buf[0] == 0x01
    pic.set_irq(0, True)
    assert not chip_out.level
    pic.set_irq(1, True)
    assert chip_out.level
    assert pic.acknowledge() == 0x49
    assert pic.acknowledge() == 0x4F         # spurious


def test_icw1_without_ic4_ends_after_icw3() -> None:
    p = Pics()
    p.out("m", 0, 0x10)
    p.out("m", 1, 0x08)
    p.out("m", 1, 0x04)
    assert p.pair.master.init_state == 0
    p.out("m", 1, 0xAA)
    assert p.inb("m", 1) == 0xAA


def test_icw2_ignores_low_bits() -> None:
    p = Pics()
    p.out("m", 0, 0x11)
    p.out("m", 1, 0x37)
    assert p.pair.master.irq_base == 0x30


def test_inputs_out_of_range_and_cascade_are_ignored() -> None:
    p = Pics()
    p.linux_init()
    for irq in (-1, 2, 16, 99):
        p.pair.set_irq(irq, True)
    assert not p.pair.has_interrupt()
    p.pair.master.set_irq(8, True)
    assert not p.pair.has_interrupt()


def test_wide_access_splits_into_bytes() -> None:
    p = Pics()
    p.pair.master.write(0, bytes([0x11, 0x30]))   # ICW1 at offset 0, ICW2 at offset 1
    assert p.pair.master.irq_base == 0x30
    buf = bytearray(3)
    p.pair.master.read(0, memoryview(buf))
    assert buf[2] == 0xFF                          # past the chip


def test_seabios_init_and_mask() -> None:
    """SeaBIOS pic_setup(): ICW1 0x11, ICW2 0x08 / 0x70, ICW3 0x04 / 0x02, ICW4 0x01, then
    masks all but the cascade."""
    p = Pics()
    for chip, base, icw3 in (("m", 0x08, 0x04), ("s", 0x70, 0x02)):
        p.out(chip, 0, 0x11)
        p.out(chip, 1, base)
        p.out(chip, 1, icw3)
        p.out(chip, 1, 0x01)
    p.out("m", 1, 0xFB)
    p.out("s", 1, 0xFF)
    p.out("s", 1, 0xFE)                            # enable IRQ 8 (RTC)
    p.pulse(8)
    assert p.pair.acknowledge() == 0x70


def test_concurrent_inputs_and_acks() -> None:
    p = Pics()
    p.linux_init()

    def dev_thread(irq: int) -> None:
        for _ in range(500):
            p.pulse(irq)

    def cpu_thread() -> None:
        for _ in range(500):
            if p.pair.has_interrupt():
                v = p.pair.acknowledge()
                p.linux_eoi(v - 0x30 if v < 0x38 else v - 0x38 + 8)

    threads = [threading.Thread(target=dev_thread, args=(i,)) for i in (1, 4, 12)]
    threads.append(threading.Thread(target=cpu_thread))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.intr.level == p.pair.has_interrupt()


# ---- random traffic --------------------------------------------------------------------------
_op = st.one_of(
    st.tuples(st.sampled_from("mse"), st.integers(-1, 2), st.binary(max_size=3)),
    st.tuples(st.just("r"), st.sampled_from("mse"), st.integers(-1, 2)),
    st.tuples(st.just("irq"), st.integers(-1, 16), st.booleans()),
    st.tuples(st.just("ack"), st.just(0), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(st.booleans(), st.lists(_op, max_size=80))
def test_random_register_traffic_never_raises(init: bool, ops: list[tuple]) -> None:
    p = Pics()
    if init:
        p.linux_init()
    devs = {"m": p.pair.master, "s": p.pair.slave, "e": p.pair.elcr}
    for a, b, c in ops:
        if a in devs:
            devs[a].write(b, c)
        elif a == "r":
            buf = bytearray(2)
            devs[b].read(c, memoryview(buf))
        elif a == "irq":
            p.pair.set_irq(b, c)
        else:
            vector = p.pair.acknowledge()
            assert 0 <= vector <= 0xFF
            m, s = p.pair.master.irq_base, p.pair.slave.irq_base
            assert m <= vector <= m + 7 or s <= vector <= s + 7
        # Invariants: INTR follows the priority resolver; registers stay bytes; the ELCR
        # read-only bits stay zero; the cascade IRR bit mirrors the slave's INT pin.
        assert p.intr.level == p.pair.has_interrupt()
        for chip in (p.pair.master, p.pair.slave):
            assert 0 <= chip.irr <= 0xFF and 0 <= chip.isr <= 0xFF and 0 <= chip.imr <= 0xFF
        assert p.pair.master.elcr & 0x07 == 0 and p.pair.slave.elcr & 0x21 == 0
        assert bool(p.pair.master.irr & 0x04) == p.pair.slave.int_level
