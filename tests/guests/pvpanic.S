/* Reports a panic through QEMU's ISA pvpanic port (0x505): prints the events the device
 * offers (EVENTS=3), PANIC, writes PVPANIC_PANICKED; if the VM is resumed (cont), prints
 * AFTER, writes PVPANIC_CRASH_LOADED, prints LOADED and spins. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $msg_events, %esi
        call puts
        mov $0x505, %dx
        in %dx, %al
        movzbl %al, %eax
        call putdec
        mov $msg_panic, %esi
        call puts
        mov $0x505, %dx
        mov $1, %al                           /* PVPANIC_PANICKED */
        out %al, %dx
        mov $msg_after, %esi
        call puts
        mov $0x505, %dx
        mov $2, %al                           /* PVPANIC_CRASH_LOADED */
        out %al, %dx
        mov $msg_loaded, %esi
        call puts
1:      jmp 1b
        .data
msg_events: .asciz "EVENTS="
msg_panic:  .asciz "\nPANIC\n"
msg_after:  .asciz "AFTER\n"
msg_loaded: .asciz "LOADED\n"
