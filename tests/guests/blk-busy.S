/* Keeps a virtio-blk disk busy for ever (modern virtio-mmio, the first slot at 0xfeb00e00,
 * so: --device virtio-blk-device,drive=ID,force-legacy=off): one 4 KiB request at a time,
 * reads and writes alternating over the first 256 KiB, polling the used ring (no
 * interrupts). Every write request carries the request number in its first dword. Counters
 * in guest RAM for the host to watch:
 *   0x206000  requests completed (u32)
 *   0x206008  polling iterations (u32), so RAM changes even between completions
 * The request is always descriptor chain 0; it waits until the used index reaches the avail
 * index in RAM, so a test may publish chain 0 once more itself (as a driver would).
 * Prints BUSY on COM1 once the device is up; a refused handshake prints FAIL and spins. */
        .include "common.inc"
        .globl _start
        .set MMIO, 0xfeb00e00
        .set DESC, 0x200000
        .set AVAIL, 0x201000
        .set USED, 0x202000
        .set HDR, 0x203000
        .set DATA, 0x204000
        .set STATUS, 0x205000
        .set DONE, 0x206000
        .set SPINS, 0x206008
_start:
        SETUP
        /* handshake, virtio 1.2 3.1.1 */
        cmpl $0x74726976, MMIO+0x000          /* "virt" */
        jne fail
        cmpl $2, MMIO+0x004                   /* modern register layout */
        jne fail
        cmpl $2, MMIO+0x008                   /* block device */
        jne fail
        movl $0, MMIO+0x070                   /* reset */
        movl $1, MMIO+0x070                   /* ACKNOWLEDGE */
        movl $3, MMIO+0x070                   /* DRIVER */
        movl $1, MMIO+0x024                   /* DriverFeaturesSel = 1 */
        movl $1, MMIO+0x020                   /* VIRTIO_F_VERSION_1 (bit 32) */
        movl $0, MMIO+0x024
        movl $0, MMIO+0x020
        movl $11, MMIO+0x070                  /* FEATURES_OK */
        testl $8, MMIO+0x070
        jz fail
        movl $0, MMIO+0x030                   /* QueueSel 0 */
        cmpl $8, MMIO+0x034                   /* QueueNumMax >= 8 */
        jb fail
        movl $8, MMIO+0x038
        movl $DESC, MMIO+0x080
        movl $0, MMIO+0x084
        movl $AVAIL, MMIO+0x090
        movl $0, MMIO+0x094
        movl $USED, MMIO+0x0a0
        movl $0, MMIO+0x0a4
        movl $1, MMIO+0x044                   /* QueueReady */
        movl $15, MMIO+0x070                  /* DRIVER_OK */
        /* the three descriptors of every request: header, data, status */
        movl $HDR, DESC+0
        movl $0, DESC+4
        movl $16, DESC+8
        movw $1, DESC+12                      /* NEXT */
        movw $1, DESC+14
        movl $DATA, DESC+16
        movl $0, DESC+20
        movl $4096, DESC+24
        movw $2, DESC+30
        movl $STATUS, DESC+32
        movl $0, DESC+36
        movl $1, DESC+40
        movw $2, DESC+44                      /* WRITE */
        movw $0, DESC+46
        mov $msg, %esi
        call puts
        xor %ebx, %ebx                        /* request number */
next:   mov %ebx, %eax
        and $1, %eax                          /* odd: VIRTIO_BLK_T_OUT (1), even: T_IN (0) */
        movl %eax, HDR+0
        movl $0, HDR+4
        mov %ebx, %ecx
        and $63, %ecx
        shl $3, %ecx                          /* sector: 8 per 4 KiB request */
        movl %ecx, HDR+8
        movl $0, HDR+12
        test %eax, %eax
        jz 1f
        movw $1, DESC+28                      /* data read by the device: NEXT */
        movl %ebx, DATA
        jmp 2f
1:      movw $3, DESC+28                      /* data written by the device: NEXT|WRITE */
2:      movb $0xff, STATUS
        movzwl AVAIL+2, %eax                  /* avail->idx */
        mov %eax, %ecx
        and $7, %ecx
        movw $0, AVAIL+4(,%ecx,2)             /* ring[idx % 8] = head 0 */
        inc %eax
        movw %ax, AVAIL+2                     /* publish */
        movl $0, MMIO+0x050                   /* QueueNotify 0 */
3:      incl SPINS
        movw AVAIL+2, %cx                     /* (the host may have added requests: */
        cmpw %cx, USED+2                      /*  wait for used->idx == avail->idx) */
        jne 3b
        incl DONE
        inc %ebx
        jmp next
fail:   mov $failmsg, %esi
        call puts
4:      jmp 4b
        .data
msg:    .asciz "BUSY\n"
failmsg: .asciz "FAIL\n"
