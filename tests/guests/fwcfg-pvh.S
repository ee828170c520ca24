/* fw_cfg from the guest's side, as a firmware uses it: the signature, the ID and the file
 * directory by port I/O (selector 0x510, data 0x511), the DMA register's "QEMU CFG", then
 * etc/e820 by DMA (an FWCfgDmaAccess with SELECT|READ, its address written big-endian to
 * 0x514/0x518), NB_CPUS/MAX_CPUS/NOGRAPHIC, and the first 64 bytes of the first opt/ file
 * (-fw_cfg opt/...). Prints on COM1, e.g.
 *
 *   FWCFG SIG=QEMU ID=3 DMA-SIG=QEMU CFG
 *   CPUS=1 MAX=1 NOGRAPHIC=0
 *   FILES=4
 *    0020 0 bios-geometry
 *    ...
 *    0023 40 etc/e820
 *   DMA etc/e820 CTL=0
 *   E820 00000000feffc000 0000000000004000 2
 *   E820 0000000000000000 0000000008000000 1
 *   OPT opt/org.example/greeting=hello      (only with an opt/ file)
 *   DONE
 *
 * then triple-faults. fwcfg-bios.S reads it the same way from real mode, as a -bios image. */
        .include "common.inc"

        .set FW_CFG_SEL, 0x510
        .set FW_CFG_DATA, 0x511
        .set FW_CFG_DMA_HI, 0x514
        .set FW_CFG_DMA_LO, 0x518
        .set FW_CFG_ID, 0x01
        .set FW_CFG_NOGRAPHIC, 0x04
        .set FW_CFG_NB_CPUS, 0x05
        .set FW_CFG_MAX_CPUS, 0x0f
        .set OPT_MAX, 64                /* bytes of the opt/ file printed */
        .set FW_CFG_FILE_DIR, 0x19
        .set DMA_SELECT_READ, 0x0a      /* FW_CFG_DMA_CTL_SELECT | FW_CFG_DMA_CTL_READ */
        .set BUF_SIZE, 480              /* 24 e820 entries */

        .globl _start
_start:
        SETUP
        cld
        mov $m_hdr, %esi
        call puts

        /* signature: select key 0, four byte reads */
        xor %eax, %eax
        call fw_select
        mov $4, %ecx
        mov $sigbuf, %edi
        call fw_read
        mov $m_sig, %esi
        call puts
        mov $sigbuf, %esi
        call puts

        /* ID: le32 feature bits */
        mov $FW_CFG_ID, %eax
        call fw_select
        mov $4, %ecx
        mov $idbuf, %edi
        call fw_read
        mov $m_id, %esi
        call puts
        mov idbuf, %eax
        call putdec

        /* the DMA address register reads back "QEMU CFG" */
        mov $FW_CFG_DMA_HI, %dx
        in %dx, %eax
        mov %eax, dsig
        mov $FW_CFG_DMA_LO, %dx
        in %dx, %eax
        mov %eax, dsig+4
        mov $m_dsig, %esi
        call puts
        mov $dsig, %esi
        call puts
        call newline

        /* the CPU counts and NOGRAPHIC: le16 each */
        mov $m_cpus, %esi
        mov $FW_CFG_NB_CPUS, %eax
        call put_le16_key
        mov $m_max, %esi
        mov $FW_CFG_MAX_CPUS, %eax
        call put_le16_key
        mov $m_nogr, %esi
        mov $FW_CFG_NOGRAPHIC, %eax
        call put_le16_key
        call newline

        /* the file directory: be32 count, then {be32 size, be16 select, u16, name[56]} */
        mov $FW_CFG_FILE_DIR, %eax
        call fw_select
        call fw_be32
        mov %eax, count
        mov $m_files, %esi
        call puts
        call putdec
        call newline
        cmpl $64, count                 /* no fw_cfg reads all ones: do not walk 4G entries */
        jbe dir_next
        movl $0, count
dir_next:
        cmpl $0, count
        je dir_done
        decl count
        call fw_be32
        mov %eax, fsize
        call fw_be16
        mov %eax, fsel
        call fw_be16                    /* reserved */
        mov $56, %ecx
        mov $fname, %edi
        call fw_read
        mov $' ', %al
        call putc
        mov fsel, %eax
        call puthex4
        mov $' ', %al
        call putc
        mov fsize, %eax
        call putdec
        mov $' ', %al
        call putc
        mov $fname, %esi
        call puts
        call newline
        cmpl $0, optsel                 /* remember the first opt/ file */
        jne 3f
        cmpl $0x2f74706f, fname         /* "opt/" */
        jne 3f
        mov fsel, %eax
        mov %eax, optsel
        mov fsize, %eax
        mov %eax, optsize
        mov $fname, %esi
        mov $optname, %edi
        mov $56, %ecx
        rep movsb
3:
        mov $fname, %esi
        mov $n_e820, %edi
        call streq
        jne dir_next
        mov fsel, %eax
        mov %eax, e820sel
        mov fsize, %eax
        mov %eax, e820size
        jmp dir_next
dir_done:

        /* etc/e820 by DMA */
        mov e820sel, %eax
        test %eax, %eax
        jz no_e820
        shl $16, %eax
        or $DMA_SELECT_READ, %eax
        bswap %eax
        mov %eax, access                /* control */
        mov e820size, %eax
        cmp $BUF_SIZE, %eax
        jbe 1f
        mov $BUF_SIZE, %eax
1:      mov %eax, e820size
        bswap %eax
        mov %eax, access+4              /* length */
        movl $0, access+8               /* address, high half (big-endian) */
        mov $buf, %eax
        bswap %eax
        mov %eax, access+12             /* address, low half */
        xor %eax, %eax
        mov $FW_CFG_DMA_HI, %dx
        out %eax, %dx                   /* high half of &access: 0 */
        mov $access, %eax
        bswap %eax
        mov $FW_CFG_DMA_LO, %dx
        out %eax, %dx                   /* low half: starts the transfer */
        mov $m_dma, %esi
        call puts
        mov access, %eax                /* control, written back: 0 = done, 1 = error */
        bswap %eax
        call putdec
        call newline

        mov e820size, %eax
        xor %edx, %edx
        mov $20, %ecx                   /* sizeof(struct e820_entry) */
        div %ecx
        mov %eax, %ecx
        mov $buf, %ebx
        jecxz done
e820_next:
        mov $m_e820, %esi
        call puts
        mov 4(%ebx), %eax
        call puthex8
        mov 0(%ebx), %eax
        call puthex8
        mov $' ', %al
        call putc
        mov 12(%ebx), %eax
        call puthex8
        mov 8(%ebx), %eax
        call puthex8
        mov $' ', %al
        call putc
        mov 16(%ebx), %eax
        call putdec
        call newline
        add $20, %ebx
        loop e820_next
        jmp done

no_e820:
        mov $m_none, %esi
        call puts
done:
        /* the first opt/ file, by port: at most OPT_MAX bytes, as a string */
        mov optsel, %eax
        test %eax, %eax
        jz 4f
        call fw_select
        mov optsize, %ecx
        cmp $OPT_MAX, %ecx
        jbe 5f
        mov $OPT_MAX, %ecx
5:      mov $optbuf, %edi
        call fw_read
        movb $0, (%edi)
        mov $m_opt, %esi
        call puts
        mov $optname, %esi
        call puts
        mov $'=', %al
        call putc
        mov $optbuf, %esi
        call puts
        call newline
4:
        mov $m_done, %esi
        call puts
        SHUTDOWN

/* fw_select: %ax to the selector port (16-bit write) */
fw_select:
        push %edx
        mov $FW_CFG_SEL, %dx
        out %ax, %dx
        pop %edx
        ret
/* put_le16_key: the label at %esi, then key %eax's le16 value in decimal */
put_le16_key:
        push %ecx
        push %edx
        call puts
        call fw_select
        mov $FW_CFG_DATA, %dx
        in %dx, %al
        movzbl %al, %ecx
        in %dx, %al
        movzbl %al, %eax
        shl $8, %eax
        or %ecx, %eax
        call putdec
        pop %edx
        pop %ecx
        ret
/* fw_read: %ecx data bytes to (%edi) */
fw_read:
        push %edx
        mov $FW_CFG_DATA, %dx
        rep insb
        pop %edx
        ret
/* fw_be32 / fw_be16: the next 4 / 2 data bytes as a big-endian number in %eax */
fw_be32:
        push %ecx
        mov $4, %ecx
        jmp 1f
fw_be16:
        push %ecx
        mov $2, %ecx
1:      push %edx
        xor %eax, %eax
        mov $FW_CFG_DATA, %dx
2:      shl $8, %eax
        in %dx, %al
        loop 2b
        pop %edx
        pop %ecx
        ret
/* puthex8 / puthex4: %eax as 8 / the low 16 bits as 4 hex digits */
puthex8:
        push %ecx
        push %ebx
        mov %eax, %ebx
        mov $8, %ecx
        jmp 1f
puthex4:
        push %ecx
        push %ebx
        mov %eax, %ebx
        shl $16, %ebx
        mov $4, %ecx
1:      push %eax
2:      rol $4, %ebx
        mov %ebx, %eax
        and $0xf, %eax
        mov hexdigits(%eax), %al
        call putc
        loop 2b
        pop %eax
        pop %ebx
        pop %ecx
        ret
newline:
        push %eax
        mov $'\n', %al
        call putc
        pop %eax
        ret
/* streq: ZF set when the strings at %esi and %edi are equal */
streq:
        push %esi
        push %edi
        push %eax
1:      mov (%esi), %al
        cmp (%edi), %al
        jne 2f
        inc %esi
        inc %edi
        test %al, %al
        jnz 1b
2:      pop %eax
        pop %edi
        pop %esi
        ret

        .data
m_hdr:  .asciz "FWCFG"
m_sig:  .asciz " SIG="
m_id:   .asciz " ID="
m_dsig: .asciz " DMA-SIG="
m_files: .asciz "FILES="
m_dma:  .asciz "DMA etc/e820 CTL="
m_e820: .asciz "E820 "
m_none: .asciz "NO etc/e820\n"
m_done: .asciz "DONE\n"
m_cpus: .asciz "CPUS="
m_max:  .asciz " MAX="
m_nogr: .asciz " NOGRAPHIC="
m_opt:  .asciz "OPT "
n_e820: .asciz "etc/e820"
hexdigits: .ascii "0123456789abcdef"

        .bss
        .align 16
access: .space 16                       /* FWCfgDmaAccess: be32 control, be32 length, be64 address */
buf:    .space BUF_SIZE
sigbuf: .space 8
idbuf:  .space 4
dsig:   .space 12
fname:  .space 60
count:  .space 4
fsize:  .space 4
fsel:   .space 4
e820sel: .space 4
e820size: .space 4
optsel: .space 4
optsize: .space 4
optname: .space 60
optbuf: .space OPT_MAX + 4
