/* A 64 KiB firmware image (-bios) that reads fw_cfg from real mode, started at the reset
 * vector: the first instruction runs at 0xfffffff0 (CS base 0xffff0000, IP 0xfff0), the
 * far jump there lands in the ISA BIOS window at 0xf0000, so it proves both mappings.
 * Prints on COM1, e.g.
 *
 *   FWCFG-RM CS=f000 SIG=QEMU ID=00000003 DMA-SIG=QEMU CFG
 *   FILES=00000004 E820=0023/00000028
 *   DMA E820 CTL=00000000 ADDR=00000000 LEN=08000000 TYPE=00000001
 *   DMA OUTSIDE-RAM CTL=00000001
 *   KEY 1234=00000000
 *   DONE
 *
 * then writes 0x31 to isa-debug-exit at 0xf4 (exit status 99) and halts. Strings live in
 * the image (DS = CS = 0xf000); buffers in RAM (ES = 0). Assembled with as --32 and linked
 * flat (ld --oformat binary), never committed as a binary. */
        .code16
        .set FW_CFG_SEL, 0x510
        .set FW_CFG_DATA, 0x511
        .set FW_CFG_DMA_HI, 0x514
        .set FW_CFG_DMA_LO, 0x518
        .set ACCESS, 0x1000             /* FWCfgDmaAccess in RAM */
        .set BUF, 0x2000
        .set OUTSIDE, 0x40000000        /* 1 GiB: beyond the test's 128 MiB of RAM */

        .text
        .globl _start
_start:
start:
        cli
        cld
        mov %cs, %ax
        mov %ax, %ds
        xor %ax, %ax
        mov %ax, %es
        mov %ax, %ss
        mov $0x7000, %sp

        mov $m_hdr, %si
        call puts
        mov %cs, %ax
        call puthex4
        mov $m_sig, %si
        call puts
        xor %ax, %ax                    /* FW_CFG_SIGNATURE */
        call fw_select
        mov $4, %cx
        mov $BUF, %di
        call fw_read
        movb $0, %es:BUF+4
        mov $BUF, %si
        call puts_es

        mov $m_id, %si
        call puts
        mov $1, %ax                     /* FW_CFG_ID */
        call fw_select
        call fw_le32
        call puthex8

        mov $m_dsig, %si                /* the DMA register reads back "QEMU CFG" */
        call puts
        mov $FW_CFG_DMA_HI, %dx
        in %dx, %eax
        mov %eax, %es:BUF
        mov $FW_CFG_DMA_LO, %dx
        in %dx, %eax
        mov %eax, %es:BUF+4
        movb $0, %es:BUF+8
        mov $BUF, %si
        call puts_es
        call newline

        /* the file directory: be32 count, {be32 size, be16 select, u16, char name[56]} */
        mov $0x19, %ax
        call fw_select
        call fw_be32
        mov %eax, %es:count
        mov $m_files, %si
        call puts
        call puthex8
        movl $0, %es:e820sel
        cmpl $64, %es:count             /* no fw_cfg reads all ones: do not walk 4G entries */
        jbe 1f
        movl $0, %es:count
1:      cmpl $0, %es:count
        je 3f
        decl %es:count
        call fw_be32
        mov %eax, %es:fsize
        call fw_be32                    /* select (be16) and reserved */
        shr $16, %eax
        mov %eax, %es:fsel
        mov $56, %cx
        mov $BUF, %di
        call fw_read
        mov $BUF, %di                   /* "etc/e820"? */
        mov $n_e820, %si
        mov $9, %cx
        repe cmpsb
        jne 1b
        mov %es:fsel, %eax
        mov %eax, %es:e820sel
        mov %es:fsize, %eax
        mov %eax, %es:e820size
        jmp 1b
3:      mov $m_e820, %si
        call puts
        mov %es:e820sel, %eax
        call puthex4
        mov $'/', %al
        call putc
        mov %es:e820size, %eax
        call puthex8
        call newline

        /* etc/e820 by DMA: SELECT | READ into BUF (at most 200 bytes) */
        mov %es:e820sel, %eax
        shl $16, %eax
        or $0x0a, %eax
        mov $200, %ebx
        mov %es:e820size, %ecx
        cmp %ebx, %ecx
        jbe 4f
        mov %ebx, %ecx
4:      mov $BUF, %edx
        call dma
        mov $m_dma, %si
        call puts
        call puthex8                    /* control as written back */
        /* the RAM entry from 0: the second one (the first is KVM's identity map) */
        mov $m_addr, %si
        call puts
        mov %es:BUF+20, %eax
        call puthex8
        mov $m_len, %si
        call puts
        mov %es:BUF+28, %eax
        call puthex8
        mov $m_type, %si
        call puts
        mov %es:BUF+36, %eax
        call puthex8
        call newline

        /* a DMA READ of the signature into memory that is not RAM: the ERROR bit */
        mov $(0x08 | 0x02), %eax        /* SELECT key 0 | READ */
        mov $4, %ecx
        mov $OUTSIDE, %edx
        call dma
        mov $m_out, %si
        call puts
        call puthex8
        call newline

        /* a key past the table selects nothing: it reads as zeros */
        mov $m_key, %si
        call puts
        mov $0x1234, %ax
        call fw_select
        call fw_le32
        call puthex8
        call newline

        mov $m_done, %si
        call puts
        mov $0x31, %al
        out %al, $0xf4                  /* isa-debug-exit: status (0x31 << 1) | 1 = 99 */
5:      hlt
        jmp 5b

/* dma: control %eax, length %ecx, address %edx; returns the control word read back */
dma:
        bswap %eax
        mov %eax, %es:ACCESS
        bswap %ecx
        mov %ecx, %es:ACCESS+4
        movl $0, %es:ACCESS+8
        bswap %edx
        mov %edx, %es:ACCESS+12
        xor %eax, %eax
        mov $FW_CFG_DMA_HI, %dx
        out %eax, %dx
        mov $ACCESS, %eax
        bswap %eax
        mov $FW_CFG_DMA_LO, %dx
        out %eax, %dx                   /* starts the transfer */
        mov %es:ACCESS, %eax
        bswap %eax
        ret
fw_select:
        mov $FW_CFG_SEL, %dx
        out %ax, %dx
        ret
/* fw_read: %cx data bytes to %es:(%di) */
fw_read:
        mov $FW_CFG_DATA, %dx
        rep insb
        ret
fw_le32:
        call fw_be32
        bswap %eax
        ret
fw_be32:
        push %cx
        mov $4, %cx
        mov $FW_CFG_DATA, %dx
1:      shl $8, %eax
        in %dx, %al
        loop 1b
        pop %cx
        ret
putc:
        push %dx
        push %ax
        mov $0x3fd, %dx
1:      in %dx, %al
        test $0x20, %al
        jz 1b
        pop %ax
        mov $0x3f8, %dx
        out %al, %dx
        pop %dx
        ret
newline:
        mov $'\n', %al
        jmp putc
/* puts: %ds:(%si); puts_es: %es:(%si); both keep %eax */
puts:
        push %ax
1:      lodsb
        test %al, %al
        jz 2f
        call putc
        jmp 1b
2:      pop %ax
        ret
puts_es:
        push %ax
1:      mov %es:(%si), %al
        inc %si
        test %al, %al
        jz 2f
        call putc
        jmp 1b
2:      pop %ax
        ret
/* puthex8: %eax; puthex4: %ax */
puthex8:
        push %eax
        push %ecx
        push %ebx
        mov %eax, %ebx
        mov $8, %cx
        jmp 1f
puthex4:
        push %eax
        push %ecx
        push %ebx
        mov %eax, %ebx
        shl $16, %ebx
        mov $4, %cx
1:      rol $4, %ebx
        mov %bl, %al
        and $0xf, %al
        add $'0', %al
        cmp $'9', %al
        jbe 2f
        add $('a' - '9' - 1), %al
2:      call putc
        loop 1b
        pop %ebx
        pop %ecx
        pop %eax
        ret

m_hdr:  .asciz "FWCFG-RM CS="
m_sig:  .asciz " SIG="
m_id:   .asciz " ID="
m_dsig: .asciz " DMA-SIG="
m_files: .asciz "FILES="
m_e820: .asciz " E820="
m_dma:  .asciz "DMA E820 CTL="
m_addr: .asciz " ADDR="
m_len:  .asciz " LEN="
m_type: .asciz " TYPE="
m_out:  .asciz "DMA OUTSIDE-RAM CTL="
m_key:  .asciz "KEY 1234="
m_done: .asciz "DONE\n"
n_e820: .asciz "etc/e820"

        /* variables in RAM (ES = 0) */
        .set count, 0x1100
        .set fsize, 0x1104
        .set fsel, 0x1108
        .set e820sel, 0x110c
        .set e820size, 0x1110

        /* the reset vector: CS base 0xffff0000 + IP 0xfff0 = the image's last 16 bytes */
        .org 0xfff0
        ljmp $0xf000, $start
        .org 0x10000
