"""The PC's pair of Intel 8259A Programmable Interrupt Controllers and their ELCR.

Register and command names are those of the Intel 8259A datasheet (order 231468-003): the
Initialization Command Words ICW1-ICW4, the Operation Command Words OCW1 (Interrupt Mask
Register), OCW2 (EOI and rotation) and OCW3 (read IRR/ISR, poll, special mask mode), and the
Interrupt Request, In-Service and Interrupt Mask registers IRR, ISR, IMR. The Edge/Level
Control Registers (ELCR, ports 0x4d0-0x4d1) are the PIIX/ICH addition every PC has. Where the
datasheet leaves a choice open the model follows QEMU's ``hw/intc/i8259.c``.

Layout: :class:`PicPair` owns three bus devices, each 2 bytes long, that the glue places:

* ``pair.master`` at 0x20 (offset 0 = ICW1/OCW2/OCW3 and IRR/ISR/poll, offset 1 = ICW2-4/OCW1),
* ``pair.slave`` at 0xa0 (same registers),
* ``pair.elcr`` at 0x4d0 (offset 0 = ELCR1 for IRQ 0-7, offset 1 = ELCR2 for IRQ 8-15).

Choices a reader should know about:

* **Edge-triggered requests latch.** The datasheet wants an edge-triggered IR input to stay
  high until the first INTA (otherwise a default IR7 is seen); devices here pulse their lines,
  so as in QEMU a rising edge sets the IRR bit and it stays set until acknowledged.
* **The cascade input (master IR2) follows the slave's INT as a level**, whatever the ELCR
  says. The slave keeps INT high while it has a request to deliver, so an acknowledge cannot
  lose a slave request that was still pending (an edge-latched cascade would).
* **Spurious interrupts** come out as on the real part: an INTA with nothing pending returns
  vector base+7 of the master (IRQ 7) without setting ISR; when the master picks IR2 and the
  slave then has nothing, the slave's base+7 (IRQ 15) is returned and only the master's ISR2
  is set, which Linux's spurious-IRQ handling expects.
* **Single mode** (ICW1 SNGL) skips ICW3, and **LTIM** (ICW1 bit 3) makes every input level
  triggered; ADI, BUF and M/S are accepted and ignored (8086 mode is assumed).
* **ELCR** bits 0-2 of ELCR1 and 0 and 5 of ELCR2 (IRQ 0, 1, 2, 8, 13) are read-only zero, as
  on the PIIX.

Every entry point takes the pair's one lock (re-entrant), so vCPU threads and device threads
may call in at once. The ``intr`` line is driven while the lock is held, which keeps level
changes in order; it must not call back into the pair from another thread while waiting.
"""
from __future__ import annotations

import threading

from microvm.api import IrqLine, get_logger

log = get_logger("microvm.pic_i8259")

# Port offsets within one 8259A (A0).
PORT_CMD = 0    # ICW1, OCW2, OCW3 (write); IRR, ISR or poll word (read)
PORT_DATA = 1   # ICW2-ICW4, OCW1 (write); IMR (read)

# ICW1
ICW1_IC4 = 0x01     # ICW4 needed
ICW1_SNGL = 0x02    # single (no ICW3)
ICW1_ADI = 0x04     # call address interval (8080 mode only)
ICW1_LTIM = 0x08    # level triggered mode for all inputs
ICW1_INIT = 0x10    # D4=1 marks ICW1 on port 0

# ICW4
ICW4_UPM = 0x01     # 8086/8088 mode
ICW4_AEOI = 0x02    # automatic end of interrupt
ICW4_MS = 0x04      # buffered mode master/slave
ICW4_BUF = 0x08     # buffered mode
ICW4_SFNM = 0x10    # special fully nested mode

# OCW2: R SL EOI in bits 7-5, L2-L0 in bits 2-0.
OCW2_ROTATE_AEOI_CLEAR = 0   # 000: clear rotate in automatic EOI mode
OCW2_NONSPECIFIC_EOI = 1     # 001
OCW2_NOP = 2                 # 010
OCW2_SPECIFIC_EOI = 3        # 011
OCW2_ROTATE_AEOI_SET = 4     # 100: set rotate in automatic EOI mode
OCW2_ROTATE_NONSPECIFIC = 5  # 101: rotate on non-specific EOI
OCW2_SET_PRIORITY = 6        # 110: set priority (L2-L0 becomes the lowest)
OCW2_ROTATE_SPECIFIC = 7     # 111: rotate on specific EOI

# OCW3: D4=0 D3=1 on port 0.
OCW3_SELECT = 0x08
OCW3_RIS = 0x01     # read ISR (1) or IRR (0) ...
OCW3_RR = 0x02      # ... when RR is set
OCW3_P = 0x04       # poll command
OCW3_SMM = 0x20     # special mask mode ...
OCW3_ESMM = 0x40    # ... when ESMM is set

CASCADE_IRQ = 2
MASTER_ELCR_MASK = 0xF8   # IRQ 0, 1, 2 are always edge (PIIX ELCR1)
SLAVE_ELCR_MASK = 0xDE    # IRQ 8 and 13 are always edge (PIIX ELCR2)


class I8259:
    """One 8259A: a bus device of 2 bytes.

    ``output`` is the INT pin. ``lock`` lets two chips of a cascade share one lock; a chip
    used alone makes its own. ``forced_level`` is a bitmask of inputs that are level
    triggered whatever the ELCR says (the master's cascade input).
    """

    def __init__(
        self,
        output: IrqLine | None = None,
        *,
        elcr_mask: int = 0xFF,
        forced_level: int = 0,
        lock: threading.RLock | None = None,
        name: str = "8259A",
    ) -> None:
        self.output = output
        self.name = name
        self.elcr_mask = elcr_mask & 0xFF
        self.forced_level = forced_level & 0xFF
        self.lock = lock if lock is not None else threading.RLock()
        self.elcr = 0
        self.irr = 0
        self.imr = 0
        self.isr = 0
        self.last_irr = 0   # input levels as last seen (for edge detection)
        self.ltim = False
        self.icw3 = 0
        self._int = False
        self._reset_init()

    # --- bus interface --------------------------------------------------------------------
    def read(self, offset: int, data: memoryview) -> None:
        with self.lock:
            for i in range(len(data)):
                data[i] = self._read_byte(offset + i)

    def write(self, offset: int, data: bytes) -> None:
        with self.lock:
            for i, value in enumerate(bytes(data)):
                self._write_byte(offset + i, value)

    # --- interrupt inputs and INTA --------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        """Drive input IR``irq`` (0-7). Out-of-range inputs are ignored."""
        if not 0 <= irq <= 7:
            return
        with self.lock:
            mask = 1 << irq
            if self._level_triggered(mask):
                if level:
                    self.irr |= mask
                    self.last_irr |= mask
                else:
                    self.irr &= ~mask
                    self.last_irr &= ~mask
            elif level:
                if not self.last_irr & mask:
                    self.irr |= mask
                self.last_irr |= mask
            else:
                self.last_irr &= ~mask
            self.update()

    def pending_irq(self) -> int:
        """The IR input the next INTA would serve, or -1 (datasheet "priority resolver")."""
        with self.lock:
            priority = self._priority(self.irr & ~self.imr)
            if priority == 8:
                return -1
            mask = self.isr
            if self.special_mask:
                mask &= ~self.imr    # special mask mode: masked levels do not block lower ones
            if self.special_fully_nested and self.forced_level & (1 << CASCADE_IRQ):
                mask &= ~(1 << CASCADE_IRQ)  # SFNM: the slave may nest within its own level
            if priority < self._priority(mask):
                return (priority + self.priority_add) & 7
            return -1

    def intack(self, irq: int) -> None:
        """The INTA cycle for IR``irq``: ISR set (unless AEOI), an edge request cleared."""
        with self.lock:
            mask = 1 << irq
            if self.auto_eoi:
                if self.rotate_on_auto_eoi:
                    self.priority_add = (irq + 1) & 7
            else:
                self.isr |= mask
            if not self._level_triggered(mask):
                self.irr &= ~mask
            self.update()

    def acknowledge(self) -> int:
        """INTA for a chip used alone: the vector, base+7 when spurious."""
        with self.lock:
            irq = self.pending_irq()
            if irq < 0:
                return self.irq_base + 7
            self.intack(irq)
            return self.irq_base + irq

    def update(self) -> None:
        """Recompute INT and drive ``output`` (only on change)."""
        with self.lock:
            level = self.pending_irq() >= 0
            if level != self._int:
                self._int = level
                if self.output is not None:
                    self.output.set_level(level)

    @property
    def int_level(self) -> bool:
        return self._int

    # --- internals ------------------------------------------------------------------------
    def _reset_init(self) -> None:
        """What ICW1 resets (QEMU's pic_reset_common): the ELCR and level requests survive."""
        self.last_irr = 0
        self.irr &= self.elcr | self.forced_level
        self.imr = 0
        self.isr = 0
        self.priority_add = 0
        self.irq_base = 0
        self.read_reg_select = False   # False: IRR, True: ISR
        self.poll = False
        self.special_mask = False
        self.init_state = 0            # 0: operational; 1-3: expecting ICW2-ICW4
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.special_fully_nested = False
        self.init4 = False
        self.single_mode = False

    def _level_triggered(self, mask: int) -> bool:
        return bool(self.ltim or (self.elcr | self.forced_level) & mask)

    def _priority(self, mask: int) -> int:
        """0 (highest) to 7 of the highest-priority bit set in ``mask``, 8 when none."""
        if mask == 0:
            return 8
        priority = 0
        while not mask & (1 << ((priority + self.priority_add) & 7)):
            priority += 1
        return priority

    def _read_byte(self, offset: int) -> int:
        if self.poll:
            # The poll word: I=1 and W2-W0 when a request is pending, and that request is
            # acknowledged as by an INTA. The poll command lasts for one read.
            self.poll = False
            irq = self.pending_irq()
            if irq < 0:
                return 0
            self.intack(irq)
            return 0x80 | irq
        if offset == PORT_CMD:
            return self.isr if self.read_reg_select else self.irr
        if offset == PORT_DATA:
            return self.imr
        return 0xFF

    def _write_byte(self, offset: int, value: int) -> None:
        if offset == PORT_CMD:
            if value & ICW1_INIT:
                self._icw1(value)
            elif value & OCW3_SELECT:
                self._ocw3(value)
            else:
                self._ocw2(value)
        elif offset == PORT_DATA:
            self._data(value)

    def _icw1(self, value: int) -> None:
        self._reset_init()
        self.init_state = 1
        self.init4 = bool(value & ICW1_IC4)
        self.single_mode = bool(value & ICW1_SNGL)
        self.ltim = bool(value & ICW1_LTIM)
        self.update()

    def _data(self, value: int) -> None:
        if self.init_state == 0:          # OCW1
            self.imr = value
            self.update()
        elif self.init_state == 1:        # ICW2: T7-T3 of the vectors
            self.irq_base = value & 0xF8
            if not self.single_mode:
                self.init_state = 2
            else:
                self.init_state = 3 if self.init4 else 0
        elif self.init_state == 2:        # ICW3: slave map (master) or slave ID (slave)
            self.icw3 = value
            self.init_state = 3 if self.init4 else 0
        else:                             # ICW4
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.init_state = 0
            if not value & ICW4_UPM:
                log.debug("%s: ICW4 selects 8080 mode; 8086 mode is what is emulated", self.name)

    def _ocw2(self, value: int) -> None:
        cmd = value >> 5
        if cmd in (OCW2_ROTATE_AEOI_CLEAR, OCW2_ROTATE_AEOI_SET):
            self.rotate_on_auto_eoi = cmd == OCW2_ROTATE_AEOI_SET
        elif cmd in (OCW2_NONSPECIFIC_EOI, OCW2_ROTATE_NONSPECIFIC):
            priority = self._priority(self.isr)
            if priority != 8:
                irq = (priority + self.priority_add) & 7
                self.isr &= ~(1 << irq)
                if cmd == OCW2_ROTATE_NONSPECIFIC:
                    self.priority_add = (irq + 1) & 7
                self.update()
        elif cmd == OCW2_SPECIFIC_EOI:
            self.isr &= ~(1 << (value & 7))
            self.update()
        elif cmd == OCW2_SET_PRIORITY:
            self.priority_add = (value + 1) & 7
            self.update()
        elif cmd == OCW2_ROTATE_SPECIFIC:
            irq = value & 7
            self.isr &= ~(1 << irq)
            self.priority_add = (irq + 1) & 7
            self.update()
        # OCW2_NOP: nothing

    def _ocw3(self, value: int) -> None:
        if value & OCW3_P:
            self.poll = True
        if value & OCW3_RR:
            self.read_reg_select = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)
            self.update()


class _CascadeLine:
    """The slave's INT pin wired to the master's IR2 (an IrqLine for the slave)."""

    def __init__(self, master: I8259) -> None:
        self.master = master
        self.gsi = CASCADE_IRQ

    def set_level(self, level: bool) -> None:
        self.master.set_irq(CASCADE_IRQ, level)

    def pulse(self) -> None:
        self.master.set_irq(CASCADE_IRQ, True)
        self.master.set_irq(CASCADE_IRQ, False)

    def eventfd(self) -> int | None:
        return None


class Elcr:
    """The two Edge/Level Control Registers, a bus device of 2 bytes (0x4d0-0x4d1)."""

    def __init__(self, master: I8259, slave: I8259) -> None:
        self._chips = (master, slave)

    def read(self, offset: int, data: memoryview) -> None:
        for i in range(len(data)):
            o = offset + i
            data[i] = self._chips[o].elcr if 0 <= o <= 1 else 0xFF

    def write(self, offset: int, data: bytes) -> None:
        for i, value in enumerate(bytes(data)):
            o = offset + i
            if 0 <= o <= 1:
                chip = self._chips[o]
                with chip.lock:
                    chip.elcr = value & chip.elcr_mask
                    chip.update()


class PicPair:
    """Master and slave 8259A cascaded on IR2, as in every PC, and the ELCR.

    Bus devices: ``master`` (0x20, 2 bytes), ``slave`` (0xa0, 2 bytes), ``elcr`` (0x4d0,
    2 bytes). Inputs: :meth:`set_irq` for ISA IRQ 0-15. Output: ``intr`` follows
    :meth:`has_interrupt`. :meth:`acknowledge` is the INTA cycle that ExtINT delivery needs.
    """

    def __init__(self, intr: IrqLine | None = None) -> None:
        self.intr = intr
        self.lock = threading.RLock()
        self.master = I8259(
            intr,
            elcr_mask=MASTER_ELCR_MASK,
            forced_level=1 << CASCADE_IRQ,
            lock=self.lock,
            name="8259A master",
        )
        self.slave = I8259(
            _CascadeLine(self.master), elcr_mask=SLAVE_ELCR_MASK, lock=self.lock, name="8259A slave"
        )
        self.elcr = Elcr(self.master, self.slave)

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA IRQ ``irq`` (0-15; 8-15 go to the slave). IRQ 2 is the cascade and
        cannot be driven from outside; other out-of-range numbers are ignored too."""
        if irq == CASCADE_IRQ or not 0 <= irq <= 15:
            return
        if irq < 8:
            self.master.set_irq(irq, level)
        else:
            self.slave.set_irq(irq - 8, level)

    def has_interrupt(self) -> bool:
        """True while an unmasked request can be delivered (the INTR pin)."""
        with self.lock:
            return self.master.pending_irq() >= 0

    def acknowledge(self) -> int:
        """The INTA cycle: returns the vector and moves the request from IRR to ISR on the
        chip(s) involved. With nothing pending it returns the master's IRQ 7 vector."""
        with self.lock:
            irq = self.master.pending_irq()
            if irq < 0:
                return self.master.irq_base + 7     # spurious IRQ 7
            if irq == CASCADE_IRQ:
                irq2 = self.slave.pending_irq()
                if irq2 >= 0:
                    self.slave.intack(irq2)
                else:
                    irq2 = 7                        # spurious IRQ 15
                vector = self.slave.irq_base + irq2
            else:
                vector = self.master.irq_base + irq
            self.master.intack(irq)
            return vector

    @property
    def elcr_value(self) -> int:
        """ELCR1 | ELCR2 << 8, one bit per ISA IRQ (1 = level triggered)."""
        with self.lock:
            return self.master.elcr | self.slave.elcr << 8
