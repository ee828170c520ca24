/* Prints SPIN and spins forever in the guest (no exits): the VMM must stop it from outside. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $msg, %esi
        call puts
1:      jmp 1b
        .data
msg:    .asciz "SPIN\n"
