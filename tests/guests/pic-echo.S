/* The 8259 path: the PIC is initialised as Linux does (ICW1 0x11, ICW2 0x20/0x28, ICW3,
 * ICW4 8086 mode), IRQ 4 is unmasked on it and masked at the IOAPIC, so the serial interrupt
 * reaches the CPU only through the PIC's INTR and the LAPIC's LINT0 (ExtINT, virtual wire).
 * Echoes each byte as <c>; 'q' prints BYE and triple-faults. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $0x24, %ecx
        mov $irq4, %eax
        call set_gate
        mov $0x27, %ecx         /* the master's spurious IRQ 7 */
        mov $iret_only, %eax
        call set_gate
        mov $0x11, %al          /* ICW1: edge, cascade, ICW4 needed */
        out %al, $0x20
        out %al, $0xa0
        mov $0x20, %al          /* ICW2: vectors 0x20-0x27 and 0x28-0x2f */
        out %al, $0x21
        mov $0x28, %al
        out %al, $0xa1
        mov $0x04, %al          /* ICW3: slave on IR2 */
        out %al, $0x21
        mov $0x02, %al
        out %al, $0xa1
        mov $0x01, %al          /* ICW4: 8086 mode, normal EOI */
        out %al, $0x21
        out %al, $0xa1
        mov $0xef, %al          /* OCW1: only IRQ 4 unmasked */
        out %al, $0x21
        mov $0xff, %al
        out %al, $0xa1
        call lapic_on
        mov $4, %ecx
        mov $0x10024, %eax      /* IOAPIC pin 4 masked (bit 16) */
        call ioapic_route
        call com1_rx_irq
        mov $ready, %esi
        call puts
        sti
1:      hlt
        jmp 1b
irq4:   pusha
2:      mov $0x3fd, %dx
        in %dx, %al
        test $1, %al
        jz 3f
        mov $0x3f8, %dx
        in %dx, %al
        cmp $'q', %al
        je bye
        mov %al, %bl
        mov $'<', %al
        call putc
        mov %bl, %al
        call putc
        mov $'>', %al
        call putc
        jmp 2b
3:      mov $0x20, %al          /* OCW2: non-specific EOI to the master */
        out %al, $0x20
        popa
        iret
bye:    mov $byemsg, %esi
        call puts
        SHUTDOWN
        .data
ready:  .asciz "READY\n"
byemsg: .asciz "\nBYE\n"
