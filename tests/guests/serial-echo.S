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
        mov $0xff, %ecx
        mov $spurious, %eax
        call set_gate
        mov $0xff, %al          /* mask both 8259s: the IOAPIC path is under test */
        out %al, $0x21
        out %al, $0xa1
        movl $0x1ff, 0xfee000f0 /* LAPIC SVR: software enable, spurious vector 0xff */
        movl $0x18, 0xfec00000  /* IOREGSEL: redirection entry 4, low dword */
        movl $0x24, 0xfec00010  /* vector 0x24, fixed, physical, edge, high, unmasked */
        movl $0x19, 0xfec00000
        movl $0, 0xfec00010     /* destination APIC ID 0 */
        mov $0x3fb, %dx
        mov $0x03, %al          /* LCR: 8N1 */
        out %al, %dx
        mov $0x3fa, %dx
        mov $0x07, %al          /* FCR: FIFO on, clear both, trigger 1 */
        out %al, %dx
        mov $0x3f9, %dx
        mov $0x01, %al          /* IER: received data available */
        out %al, %dx
        mov $0x3fc, %dx
        mov $0x0b, %al          /* MCR: DTR, RTS, OUT2 (gates IRQ 4) */
        out %al, %dx
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
spurious:
        iret
bye:    mov $byemsg, %esi
        call puts
        SHUTDOWN

        .data
ready:  .asciz "READY\n"
byemsg: .asciz "\nBYE\n"
