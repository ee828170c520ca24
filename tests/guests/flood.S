/* A guest that loops on one ignored register write: 60,000 dword writes to the DeviceID
 * register (read-only) of the first virtio-mmio device (0xfeb00e00), then DONE and a triple
 * fault. The VMM's default log must stay bounded (issue 12: one warning line per write
 * filled the host's disk). */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $60000, %ecx
1:      movl %ecx, 0xfeb00e08           /* DeviceID: read-only, the write is ignored */
        dec %ecx
        jnz 1b
        mov $msg, %esi
        call puts
        SHUTDOWN
        .data
msg:    .asciz "\nDONE\n"
