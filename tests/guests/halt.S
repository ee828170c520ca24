/* Prints HALT, then halts with interrupts off: nothing can ever wake the vCPU. QEMU 7.2
 * (KVM, in-kernel LAPIC) leaves such a VM running, with no event; so does microvm. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $msg, %esi
        call puts
        cli
        hlt
        jmp _start
        .data
msg:    .asciz "HALT\n"
