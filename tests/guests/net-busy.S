/* Keeps a virtio-net device busy both ways for ever (modern virtio-mmio, the first slot at
 * 0xfeb00e00, so: --device virtio-net-device,netdev=ID,force-legacy=off), polling the used
 * rings (no interrupts): eight 2 KiB receive buffers, each given back to the device as soon
 * as it returns it full; one 60-byte broadcast frame (ethertype 0x88b5, local experimental)
 * transmitted again as soon as the device has sent the last one. Only VIRTIO_F_VERSION_1 is
 * negotiated, so every buffer starts with the 12-byte virtio_net_hdr_v1. Counters in guest
 * RAM for the host to watch:
 *   0x206000  frames received (u32)
 *   0x206008  polling iterations (u32), so RAM changes even between frames
 *   0x206010  frames transmitted (u32)
 * Prints NET on COM1 once the device is up; a refused handshake prints FAIL and spins. */
        .include "common.inc"
        .globl _start
        .set MMIO, 0xfeb00e00
        .set RXDESC, 0x200000
        .set RXAVAIL, 0x201000
        .set RXUSED, 0x202000
        .set TXDESC, 0x203000
        .set TXAVAIL, 0x204000
        .set TXUSED, 0x205000
        .set RXDONE, 0x206000
        .set SPINS, 0x206008
        .set TXDONE, 0x206010
        .set RXBUF, 0x210000
        .set TXBUF, 0x220000
_start:
        SETUP
        /* handshake, virtio 1.2 3.1.1 */
        cmpl $0x74726976, MMIO+0x000          /* "virt" */
        jne fail
        cmpl $2, MMIO+0x004                   /* modern register layout */
        jne fail
        cmpl $1, MMIO+0x008                   /* network card */
        jne fail
        movl $0, MMIO+0x070                   /* reset */
        movl $1, MMIO+0x070                   /* ACKNOWLEDGE */
        movl $3, MMIO+0x070                   /* DRIVER */
        movl $1, MMIO+0x024                   /* DriverFeaturesSel = 1 */
        movl $1, MMIO+0x020                   /* VIRTIO_F_VERSION_1 (bit 32) */
        movl $0, MMIO+0x024
        movl $0, MMIO+0x020                   /* nothing else: no MAC, no offloads */
        movl $11, MMIO+0x070                  /* FEATURES_OK */
        testl $8, MMIO+0x070
        jz fail
        /* queue 0: receive */
        movl $0, MMIO+0x030
        cmpl $8, MMIO+0x034
        jb fail
        movl $8, MMIO+0x038
        movl $RXDESC, MMIO+0x080
        movl $0, MMIO+0x084
        movl $RXAVAIL, MMIO+0x090
        movl $0, MMIO+0x094
        movl $RXUSED, MMIO+0x0a0
        movl $0, MMIO+0x0a4
        movl $1, MMIO+0x044
        /* queue 1: transmit */
        movl $1, MMIO+0x030
        cmpl $8, MMIO+0x034
        jb fail
        movl $8, MMIO+0x038
        movl $TXDESC, MMIO+0x080
        movl $0, MMIO+0x084
        movl $TXAVAIL, MMIO+0x090
        movl $0, MMIO+0x094
        movl $TXUSED, MMIO+0x0a0
        movl $0, MMIO+0x0a4
        movl $1, MMIO+0x044
        movl $15, MMIO+0x070                  /* DRIVER_OK */
        /* eight device-writable receive buffers, all made available */
        xor %ecx, %ecx
1:      mov %ecx, %eax
        shl $11, %eax                         /* 2 KiB each */
        add $RXBUF, %eax
        mov %ecx, %edx
        shl $4, %edx
        movl %eax, RXDESC(%edx)
        movl $0, RXDESC+4(%edx)
        movl $2048, RXDESC+8(%edx)
        movw $2, RXDESC+12(%edx)              /* WRITE */
        movw $0, RXDESC+14(%edx)
        movw %cx, RXAVAIL+4(,%ecx,2)
        inc %ecx
        cmp $8, %ecx
        jne 1b
        movw $8, RXAVAIL+2
        movl $0, MMIO+0x050                   /* QueueNotify 0 */
        /* the frame: a zero header, then broadcast from 52:54:00:12:34:56, type 0x88b5 */
        movl $0xffffffff, TXBUF+12
        movw $0xffff, TXBUF+16
        movl $0x12005452, TXBUF+18
        movw $0x5634, TXBUF+22
        movw $0xb588, TXBUF+24
        movl $TXBUF, TXDESC
        movl $0, TXDESC+4
        movl $72, TXDESC+8                    /* 12 + 60 */
        movw $0, TXDESC+12
        movw $0, TXDESC+14
        mov $msg, %esi
        call puts
        xor %edi, %edi                        /* receive used index seen */
        mov $8, %ebp                          /* receive avail index */
loop:   incl SPINS
        /* receive: give every returned buffer back */
        xor %ebx, %ebx                        /* buffers given back this round */
2:      movzwl RXUSED+2, %eax
        cmp %di, %ax
        je 3f
        mov %edi, %ecx
        and $7, %ecx
        movl RXUSED+4(,%ecx,8), %eax          /* used ring[seen % 8].id */
        mov %ebp, %ecx
        and $7, %ecx
        movw %ax, RXAVAIL+4(,%ecx,2)
        inc %ebp
        movw %bp, RXAVAIL+2
        incl RXDONE
        inc %edi
        inc %ebx
        jmp 2b
3:      test %ebx, %ebx
        jz 4f
        movl $0, MMIO+0x050                   /* QueueNotify 0: buffers available again */
        /* transmit: the next frame once the device sent the last one */
4:      movzwl TXAVAIL+2, %eax
        cmpw %ax, TXUSED+2
        jne loop
        movl %eax, TXDONE
        mov %eax, %ecx
        and $7, %ecx
        movw $0, TXAVAIL+4(,%ecx,2)           /* ring[idx % 8] = head 0 */
        inc %eax
        movw %ax, TXAVAIL+2
        movl $1, MMIO+0x050                   /* QueueNotify 1 */
        jmp loop
fail:   mov $failmsg, %esi
        call puts
5:      jmp 5b
        .data
msg:    .asciz "NET\n"
failmsg: .asciz "FAIL\n"
