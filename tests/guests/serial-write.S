/* Writes TOTAL bytes (default 1 MiB) to COM1 and triple-faults. By default with `rep outsb`
 * of 4 KiB chunks, the fastest a guest can feed a 16550 (THRE always reads 1 on microvm's
 * and QEMU's UART, and the VMM gets many bytes per exit); with --defsym POLLED=1 byte by
 * byte, waiting for LSR.THRE before each, as a real driver (Linux's 8250 console) does. */
        .include "common.inc"
        .ifndef TOTAL
        .set TOTAL, 1048576
        .endif
        .set CHUNK, 4096
        .globl _start
_start:
        SETUP
        cld
        mov $(TOTAL / CHUNK), %ebp
        test %ebp, %ebp
        jz 3f                           /* TOTAL=0: the benchmark's baseline */
1:      mov $chunk, %esi
        mov $CHUNK, %ecx
        .ifdef POLLED
2:      lodsb
        call putc
        loop 2b
        .else
        mov $0x3f8, %dx
        rep outsb
        .endif
        dec %ebp
        jnz 1b
3:      SHUTDOWN

        .data
        .align 64
chunk:  .rept CHUNK / 64
        .ascii "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+\n"
        .endr
