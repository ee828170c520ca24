/* Serial interrupts in 64-bit long mode, so that interrupt returns are IRETQ (an emulating
 * host KVM cannot emulate a 32-bit IRET; QEMU has no way round that, IRETQ works everywhere).
 *
 * From the PVH entry (32-bit protected mode, paging off) the guest identity-maps the first
 * 4 GiB with 2 MiB pages (RAM in the first GiB; the IOAPIC at 0xfec00000 and the LAPIC at
 * 0xfee00000 in the fourth), enables PAE, sets EFER.LME, turns paging on and far-jumps to a
 * 64-bit code segment. Then, as serial-echo.S: LAPIC software-enabled, both 8259s masked,
 * IOAPIC pin 4 -> vector 0x24 edge-triggered, the 16550's RX interrupt on (IER.ERBFI,
 * MCR.OUT2), "READY" printed, and `hlt` with interrupts on.
 *
 * The handler counts its entries (IRQS) and drains the RX FIFO while LSR.DR is set, counting
 * the bytes silently (COUNT). On 'q' it prints "COUNT=<bytes before q> IRQS=<entries>" and
 * triple-faults. No INT3, POPCNT, XSAVE or FWAIT. Self-contained (no common.inc).
 *
 * Assembled with `--defsym LEVEL=1` (bench/irq.py does), pin 4 is level-triggered instead and
 * the handler takes at most one byte per entry before its EOI: while the FIFO still holds data
 * the line stays high and the IOAPIC delivers again after the EOI, so every byte is one
 * interrupt (one delivery and one acknowledgement) whatever the VMM's FIFO refill does. */
        .section .note.Xen, "a"
        .align 4
        .long 4
        .long 4
        .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .align 4
        .long _start

        .data
        .align 8
gdt:    .quad 0
        .quad 0x00cf9a000000ffff        /* 0x08: code, flat 32-bit */
        .quad 0x00cf92000000ffff        /* 0x10: data, flat */
        .quad 0x00af9a000000ffff        /* 0x18: code, 64-bit (L=1, D=0) */
gdt_desc:
        .word 31
        .long gdt
        .align 8
idt_desc:
        .word 256*16-1
        .quad idt
idt0:   .word 0
        .quad 0
count:  .long 0                 /* bytes received before 'q' */
irqs:   .long 0                 /* handler entries */
ready:  .asciz "READY\n"
m_count: .asciz "COUNT="
m_irqs: .asciz " IRQS="

        .bss
        .align 4096
pml4:   .space 4096
pdpt:   .space 4096
pd:     .space 4*4096           /* four page directories: 4 GiB in 2 MiB pages */
idt:    .space 256*16
stack:  .space 8192
stack_top:

        .text
        .code32
        .globl _start
_start:
        cli
        lgdt gdt_desc
        ljmp $0x08, $1f
1:      mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $stack_top, %esp
        /* page tables (cleared first: do not rely on the loader zeroing .bss) */
        cld
        mov $pml4, %edi
        mov $(6*4096/4), %ecx
        xor %eax, %eax
        rep stosl
        movl $(pdpt + 0x03), pml4               /* present, writable */
        mov $pdpt, %edi
        mov $(pd + 0x03), %eax
        mov $4, %ecx
2:      mov %eax, (%edi)
        add $4096, %eax
        add $8, %edi
        loop 2b
        mov $pd, %edi
        mov $0x83, %eax                         /* present, writable, 2 MiB page (PS) */
        xor %edx, %edx                          /* bits 32+ of the physical address */
        mov $2048, %ecx
3:      mov %eax, (%edi)
        mov %edx, 4(%edi)
        add $0x200000, %eax
        adc $0, %edx
        add $8, %edi
        loop 3b
        /* long mode: PAE, CR3, EFER.LME, paging */
        mov %cr4, %eax
        or $0x20, %eax                          /* CR4.PAE */
        mov %eax, %cr4
        mov $pml4, %eax
        mov %eax, %cr3
        mov $0xc0000080, %ecx                   /* IA32_EFER */
        rdmsr
        or $0x100, %eax                         /* LME */
        wrmsr
        mov %cr0, %eax
        or $0x80000001, %eax                    /* PG, PE */
        mov %eax, %cr0
        ljmp $0x18, $long64

        .code64
long64: mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov $stack_top, %esp                    /* zero-extends into %rsp */
        lidt idt_desc
        mov $0x24, %ecx
        mov $irq4, %eax
        call set_gate
        mov $0xff, %ecx
        mov $spurious, %eax
        call set_gate
        mov $0xff, %al                          /* mask both 8259s: the IOAPIC path is used */
        out %al, $0x21
        out %al, $0xa1
        mov $0xfee000f0, %eax                   /* LAPIC SVR: software enable, spurious 0xff */
        movl $0x1ff, (%rax)
        mov $0xfec00000, %eax                   /* IOAPIC: IOREGSEL at +0, IOWIN at +0x10 */
        movl $0x18, (%rax)                      /* redirection entry 4, low dword */
        .ifdef LEVEL
        movl $0x8024, 0x10(%rax)                /* vector 0x24, fixed, physical, level, high */
        .else
        movl $0x24, 0x10(%rax)                  /* vector 0x24, fixed, physical, edge, high */
        .endif
        movl $0x19, (%rax)
        movl $0, 0x10(%rax)                     /* destination APIC ID 0 */
        mov $0x3fb, %dx
        mov $0x03, %al                          /* LCR: 8N1 */
        out %al, %dx
        mov $0x3fa, %dx
        mov $0x07, %al                          /* FCR: FIFO on, clear both, trigger 1 */
        out %al, %dx
        mov $0x3f9, %dx
        mov $0x01, %al                          /* IER: received data available */
        out %al, %dx
        mov $0x3fc, %dx
        mov $0x0b, %al                          /* MCR: DTR, RTS, OUT2 (gates IRQ 4) */
        out %al, %dx
        mov $ready, %esi
        call puts
        sti
4:      hlt
        jmp 4b

irq4:   push %rax
        push %rdx
        incl irqs(%rip)
5:      mov $0x3fd, %dx
        in %dx, %al
        test $1, %al                            /* LSR.DR */
        jz 6f
        mov $0x3f8, %dx
        in %dx, %al
        cmp $'q', %al
        je bye
        incl count(%rip)
        .ifndef LEVEL
        jmp 5b                                  /* edge: drain the FIFO */
        .endif
6:      mov $0xfee000b0, %eax                   /* LAPIC EOI */
        movl $0, (%rax)
        pop %rdx
        pop %rax
        iretq
spurious:
        iretq

bye:    mov $m_count, %esi
        call puts
        mov count(%rip), %eax
        call putdec
        mov $m_irqs, %esi
        call puts
        mov irqs(%rip), %eax
        call putdec
        mov $'\n', %al
        call putc
        lidt idt0(%rip)                         /* empty IDT, then an exception: triple fault */
        ud2

/* putc: %al to the THR once LSR.THRE is set */
putc:   push %rdx
        push %rax
7:      mov $0x3fd, %dx
        in %dx, %al
        test $0x20, %al
        jz 7b
        pop %rax
        mov $0x3f8, %dx
        out %al, %dx
        pop %rdx
        ret
/* puts: NUL-terminated string at %rsi */
puts:   push %rax
8:      lodsb
        test %al, %al
        jz 9f
        call putc
        jmp 8b
9:      pop %rax
        ret
/* putdec: %eax as unsigned decimal */
putdec: push %rax
        push %rbx
        push %rcx
        push %rdx
        mov $10, %ebx
        xor %ecx, %ecx
10:     xor %edx, %edx
        div %ebx
        push %rdx
        inc %ecx
        test %eax, %eax
        jnz 10b
11:     pop %rax
        add $'0', %al
        call putc
        loop 11b
        pop %rdx
        pop %rcx
        pop %rbx
        pop %rax
        ret
/* set_gate: vector in %ecx, handler in %eax: a 64-bit interrupt gate, code selector 0x18 */
set_gate:
        push %rdi
        push %rax
        mov %ecx, %edi
        shl $4, %edi
        add $idt, %edi
        mov %ax, (%rdi)
        movw $0x18, 2(%rdi)
        movw $0x8e00, 4(%rdi)                   /* present, DPL 0, 64-bit interrupt gate */
        shr $16, %eax
        mov %ax, 6(%rdi)
        movl $0, 8(%rdi)                        /* offset 63:32 (the guest is below 4 GiB) */
        movl $0, 12(%rdi)
        pop %rax
        pop %rdi
        ret
