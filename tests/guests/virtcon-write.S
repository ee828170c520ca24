/* Writes TOTAL bytes (default 1 MiB) to a virtio console and triple-faults: a minimal legacy
 * virtio-mmio driver (virtio 1.2 §4.2.4) for the device in the first slot (0xfeb00e00, where
 * QEMU and microvm put the first -device). It negotiates no feature, so there is no
 * MULTIPORT: port 0 is the console and its transmitq is queue 1 (Linux does the same on such
 * a device). Chunks of 4 KiB, up to QN in flight, one QueueNotify each; it waits for the
 * device to use everything before the triple fault, so all of TOTAL has left the guest.
 * On a missing or unexpected device it prints "NO-VIRTCON" on COM1 (if there is one). */
        .include "common.inc"
        .ifndef TOTAL
        .set TOTAL, 1048576
        .endif
        .set CHUNK, 4096
        .set QN, 16
        .set BASE, 0xfeb00e00
        .set AVAIL, vring + 16*QN
        .set USED, vring + 4096
        .globl _start
_start:
        SETUP
        cmpl $0x74726976, BASE+0x000    /* MagicValue "virt" */
        jne fail
        cmpl $1, BASE+0x004             /* Version 1: the legacy layout (QEMU 7.2's default) */
        jne fail
        cmpl $3, BASE+0x008             /* DeviceID 3: console */
        jne fail
        movl $4096, BASE+0x028          /* GuestPageSize */
        movl $0, BASE+0x070             /* Status: reset */
        movl $1, BASE+0x070             /* ACKNOWLEDGE */
        movl $3, BASE+0x070             /* DRIVER */
        movl $0, BASE+0x024             /* DriverFeaturesSel */
        movl $0, BASE+0x020             /* DriverFeatures: none */
        movl $1, BASE+0x030             /* QueueSel: port 0's transmitq */
        cmpl $QN, BASE+0x034            /* QueueNumMax */
        jb fail
        movl $QN, BASE+0x038            /* QueueNum */
        movl $4096, BASE+0x03c          /* QueueAlign */
        mov $vring, %eax
        shr $12, %eax
        mov %eax, BASE+0x040            /* QueuePFN */
        movl $7, BASE+0x070             /* DRIVER_OK */

        xor %ebx, %ebx                  /* chunks made available (avail->idx) */
        mov $(TOTAL / CHUNK), %ebp
next:   cmp %ebp, %ebx
        je drain
1:      movzwl USED+2, %eax             /* wait while QN chunks are in flight */
        mov %ebx, %ecx
        sub %eax, %ecx
        and $0xffff, %ecx
        cmp $QN, %ecx
        jae 1b
        mov %ebx, %edi                  /* descriptor ebx % QN: the chunk, device-readable */
        and $(QN - 1), %edi
        mov %edi, %edx
        shl $4, %edi
        movl $chunk, vring(%edi)
        movl $0, vring+4(%edi)
        movl $CHUNK, vring+8(%edi)
        movl $0, vring+12(%edi)         /* flags 0, next 0 */
        mov %ebx, %eax
        and $(QN - 1), %eax
        movw %dx, AVAIL+4(,%eax,2)      /* avail->ring[idx % QN] */
        inc %ebx
        movw %bx, AVAIL+2               /* avail->idx */
        movl $1, BASE+0x050             /* QueueNotify: queue 1 */
        jmp next
drain:  movzwl USED+2, %eax             /* until the device used every chunk */
        cmp %bx, %ax
        jne drain
        SHUTDOWN
fail:   mov $failmsg, %esi
        call puts
        SHUTDOWN

        .data
failmsg: .asciz "NO-VIRTCON\n"
        .align 64
chunk:  .rept CHUNK / 64
        .ascii "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+\n"
        .endr
        .bss
        .align 4096
vring:  .space 2 * 4096
