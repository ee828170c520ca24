/* Prints a line on COM1 forever with `rep outsb` (one exit per line, so output outruns any
 * pipe quickly). Used to check that host output never blocks a vCPU: with stdout a pipe that
 * nobody reads, SIGTERM still ends the VMM, and what does not fit is dropped and counted. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        cld
1:      mov $msg, %esi
        mov $msglen, %ecx
        mov $0x3f8, %dx
        rep outsb
        jmp 1b
        .data
msg:    .ascii "the quick brown fox jumps over the lazy dog 0123456789\n"
        .set msglen, . - msg
