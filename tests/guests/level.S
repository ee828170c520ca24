/* A level-triggered IOAPIC pin is re-delivered after each EOI while the source still asserts it.
 * The 16550's RX interrupt (IRQ 4) is routed level-triggered to vector 0x24. The handler EOIs
 * without reading RBR three times (the line stays high, so the IOAPIC must deliver again after
 * each EOI: remote IRR, KVM_EXIT_IOAPIC_EOI), then reads the byte, which lowers the line.
 * Prints READY, and after the byte "LEVEL <deliveries> <char>" and triple-faults. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $0x24, %ecx
        mov $irq4, %eax
        call set_gate
        call mask_8259
        call lapic_on
        mov $4, %ecx
        mov $0x8024, %eax       /* vector 0x24, level-triggered (bit 15), active high */
        call ioapic_route
        call com1_rx_irq
        mov $ready, %esi
        call puts
        sti
1:      hlt
        cmpb $0, got
        je 1b
        cli
        mov $m_level, %esi
        call puts
        mov deliveries, %eax
        call putdec
        mov $' ', %al
        call putc
        mov got, %al
        call putc
        mov $'\n', %al
        call putc
        SHUTDOWN
irq4:   push %eax
        push %edx
        incl deliveries
        cmpl $4, deliveries
        jb 2f                   /* not yet: leave the byte in RBR, the line stays high */
        mov $0x3f8, %dx
        in %dx, %al
        mov %al, got
2:      movl $0, 0xfee000b0     /* EOI: for a level vector KVM tells the IOAPIC */
        pop %edx
        pop %eax
        iret
        .data
deliveries: .long 0
got:    .byte 0
ready:  .asciz "READY\n"
m_level: .asciz "LEVEL "
