/* Writes EXIT to COM1, then 0x2a to isa-debug-exit at 0xf4: the VMM exits with 0x55. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $msg, %esi
        call puts
        mov $0x2a, %al
        out %al, $0xf4
1:      hlt
        jmp 1b
        .data
msg:    .asciz "EXIT\n"
