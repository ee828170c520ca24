/* The instructions an emulating host cannot execute (docs/emulating-hosts.md), as Linux uses them: INT3 with a
 * #BP handler that returns, FWAIT, POPCNT. Prints BP (from the handler), then INT3-OK, FWAIT-OK
 * and POPCNT=<letter> where the letter is 'A' + popcount(0x00ff00ff) = 'Q'; then triple-faults.
 * On a host with hardware virtualization the CPU runs them itself and the output is the same. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $3, %ecx
        mov $bp_handler, %eax
        call set_gate
        int3
        mov $m_int3, %esi
        call puts
        fwait
        mov $m_fwait, %esi
        call puts
        mov $0x00ff00ff, %ecx
        popcnt %ecx, %ebx
        mov $m_popcnt, %esi
        call puts
        lea 'A'(%ebx), %eax
        call putc
        mov $'\n', %al
        call putc
        SHUTDOWN
bp_handler:
        push %esi
        mov $m_bp, %esi
        call puts
        pop %esi
        iret
        .data
m_bp:     .asciz "BP\n"
m_int3:   .asciz "INT3-OK\n"
m_fwait:  .asciz "FWAIT-OK\n"
m_popcnt: .asciz "POPCNT="
