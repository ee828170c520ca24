/* Serial input and interrupts: enables the 16550's RX interrupt (IER.ERBFI, MCR.OUT2), routes
 * IRQ 4 through the IOAPIC (pin 4, vector 0x24) to the LAPIC, prints READY, then halts with
 * interrupts on. Each received byte is echoed as [c]; 'q' prints BYE and triple-faults. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $0x24, %ecx
        mov $irq4, %eax
        call set_gate
        call mask_8259
        call lapic_on           /* LAPIC SVR: software enable, spurious vector 0xff */
        mov $4, %ecx
        mov $0x24, %eax         /* pin 4: vector 0x24, fixed, physical, edge, high, unmasked */
        call ioapic_route
        mov $0x3fb, %dx
        mov $0x03, %al          /* LCR: 8N1 */
        out %al, %dx
        mov $0x3fa, %dx
        mov $0x07, %al          /* FCR: FIFO on, clear both, trigger 1 */
        out %al, %dx
        call com1_rx_irq
        mov $ready, %esi
        call puts
        sti
1:      hlt
        jmp 1b

irq4:   pusha
2:      mov $0x3fd, %dx
        in %dx, %al
        test $1, %al            /* LSR.DR */
        jz 3f
        mov $0x3f8, %dx
        in %dx, %al
        cmp $'q', %al
        je bye
        mov %al, %bl
        mov $'[', %al
        call putc
        mov %bl, %al
        call putc
        mov $']', %al
        call putc
        jmp 2b
3:      movl $0, 0xfee000b0     /* LAPIC EOI */
        popa
        iret
bye:    mov $byemsg, %esi
        call puts
        SHUTDOWN

        .data
ready:  .asciz "READY\n"
byemsg: .asciz "\nBYE\n"
