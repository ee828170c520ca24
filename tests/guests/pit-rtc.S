/* PIT channel 0 (mode 2, 100 Hz) on IRQ 0 and the RTC's periodic interrupt (64 Hz) on IRQ 8,
 * both through the IOAPIC (IRQ 0 arrives on pin 2, the ISA override; the MP table says so).
 * After 100 PIT ticks (one second of PIT time) prints "PIT=100 RTC=<n>" and triple-faults:
 * n is the number of RTC interrupts in that second, 64 at the programmed rate. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $0x30, %ecx
        mov $pit_irq, %eax
        call set_gate
        mov $0x38, %ecx
        mov $rtc_irq, %eax
        call set_gate
        call mask_8259
        call lapic_on
        mov $2, %ecx            /* IRQ 0 -> pin 2, edge */
        mov $0x30, %eax
        call ioapic_route
        mov $8, %ecx            /* IRQ 8 -> pin 8, edge */
        mov $0x38, %eax
        call ioapic_route
        mov $0x0a, %al          /* RTC register A: divider on, rate 10 = 64 Hz */
        out %al, $0x70
        mov $0x2a, %al
        out %al, $0x71
        mov $0x0b, %al          /* register B: PIE, 24-hour */
        out %al, $0x70
        mov $0x42, %al
        out %al, $0x71
        mov $0x0c, %al          /* read C: clear stale flags */
        out %al, $0x70
        in $0x71, %al
        mov $0x34, %al          /* PIT: channel 0, lobyte/hibyte, mode 2 */
        out %al, $0x43
        mov $11932, %ax         /* 1193182 / 11932 = 100 Hz */
        out %al, $0x40
        mov %ah, %al
        out %al, $0x40
        sti
1:      hlt
        cmpl $100, pit_ticks
        jb 1b
        cli
        mov $m1, %esi
        call puts
        mov pit_ticks, %eax
        call putdec
        mov $m2, %esi
        call puts
        mov rtc_ticks, %eax
        call putdec
        mov $'\n', %al
        call putc
        SHUTDOWN
pit_irq:
        incl pit_ticks
        cmpl $1, pit_ticks      /* start counting RTC interrupts at the first PIT tick */
        jne 2f
        movl $0, rtc_ticks
2:      movl $0, 0xfee000b0
        iret
rtc_irq:
        push %eax
        incl rtc_ticks
        mov $0x0c, %al          /* read register C: acknowledges (and lowers IRQ 8) */
        out %al, $0x70
        in $0x71, %al
        movl $0, 0xfee000b0
        pop %eax
        iret
        .data
pit_ticks: .long 0
rtc_ticks: .long 0
m1:     .asciz "PIT="
m2:     .asciz " RTC="
