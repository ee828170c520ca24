/* A hostile guest: pseudo-random values written to and read from every I/O port and to the
 * MMIO windows of the virtio-mmio slots and the IOAPIC, with interrupts off. Then it puts
 * COM1 back into a sane state, prints DONE and triple-faults. The VMM must survive all of it.
 * Port 0xf4 (isa-debug-exit, where present) is skipped so the guest is not ended early. */
        .include "common.inc"
        .globl _start
_start:
        SETUP
        mov $0x9e3779b9, %ebx           /* xorshift32 state */
        xor %ecx, %ecx                  /* port */
1:      cmp $0xf4, %ecx
        je 2f
        call rnd
        mov %cx, %dx
        out %al, %dx
        in %dx, %al
        call rnd
        out %ax, %dx                    /* and a 16-bit access */
        in %dx, %ax
2:      inc %ecx
        cmp $0x10000, %ecx
        jb 1b
        mov $0xfeb00000, %edi           /* the eight virtio-mmio windows, dword by dword */
3:      call rnd
        mov %eax, (%edi)
        mov (%edi), %eax
        add $4, %edi
        cmp $0xfeb01000, %edi
        jb 3b
        mov $0xfec00000, %edi           /* the IOAPIC's registers */
4:      call rnd
        mov %eax, (%edi)
        mov (%edi), %eax
        add $4, %edi
        cmp $0xfec00100, %edi
        jb 4b
        mov $0x3fb, %dx                 /* COM1: 8N1, DLAB off */
        mov $0x03, %al
        out %al, %dx
        mov $0x3fc, %dx                 /* MCR: no loopback */
        xor %al, %al
        out %al, %dx
        mov $0x3f9, %dx                 /* IER off */
        out %al, %dx
        mov $msg, %esi
        call puts
        SHUTDOWN
rnd:    mov %ebx, %eax                  /* xorshift32 */
        shl $13, %eax
        xor %eax, %ebx
        mov %ebx, %eax
        shr $17, %eax
        xor %eax, %ebx
        mov %ebx, %eax
        shl $5, %eax
        xor %eax, %ebx
        mov %ebx, %eax
        ret
        .data
msg:    .asciz "\nDONE\n"
