/* Counting edge-triggered interrupts from the 16550's THRE source, 64-bit (IRETQ) so that QEMU
 * runs it on an emulating host KVM too. Self-contained (no common.inc), as irq64.S.
 *
 * Set-up: long mode, both 8259s masked (OCW1), LAPIC software-enabled (spurious vector 0x0f),
 * IOAPIC pin 4 (the 16550's IRQ 4) fixed delivery, physical destination APIC 0, edge-triggered,
 * active high; 16550 MCR = DTR|RTS|OUT2 (OUT2 gates INTR onto IRQ 4 on a PC), IER = 0.
 *
 * Then N rounds (--defsym N=..., default 240). Each round makes the 16550 raise its THRE
 * interrupt by enabling it in IER (ETBEI, bit 1): THR is always empty, so turning ETBEI on
 * arms THRE and INTR goes high. How the round does that is the variant:
 *
 *   default  IER = 0 (ETBEI off: THRE disarmed, INTR low), then IER = 0x02 (INTR high): one
 *            rising edge per round, the line low in between. The handler reads IIR, which
 *            identifies THRE (0x02) and clears it (INTR low again), and checks that it did.
 *   HOLD     IER = 0x02 every round, nothing else; the handler neither reads IIR nor writes
 *            THR. Only the first write changes ETBEI, so INTR goes high once and stays high:
 *            one edge in all, whatever N is.
 *   RERAISE  IER = 0x02 and 0x03 in turn (ERBFI toggled, ETBEI left on); the handler neither
 *            reads IIR nor writes THR. THRE stays pending, so INTR stays high: each IER write
 *            is a change of the 16550's enables but no edge on IRQ 4.
 *   INSERVICE one round only; the handler itself makes the next edge (IER = 0, then 0x02)
 *            after reading IIR and *before* its EOI, N-1 times: each edge reaches the pin
 *            while the previous interrupt is still in service at the LAPIC.
 *   EARLY    (with HOLD) IER = 0x02 and MCR.OUT2 are written before pin 4 is routed, while
 *            its entry still has the reset value (masked): the one edge there is comes while
 *            the pin is masked, and "edge-sensitive interrupts signaled on a masked interrupt
 *            pin are ignored" (82093AA), so nothing at all is delivered.
 *   VECTORS  (with any of the above) round i first reprograms pin 4's redirection entry to
 *            vector 0x10 + i (fixed, edge), i = 0..239: "each pin programming followed by a
 *            16550 interrupt". Every vector 0x10-0xff has the counting handler.
 *
 * After the write that should raise INTR the round waits (a bounded spin, SPIN iterations) for
 * the handler to have counted it, then goes on; the interrupt normally arrives at once, since
 * interrupts are enabled and the message is sent during the OUT's exit. LATE counts rounds
 * where it had not arrived by the instruction after the OUT.
 *
 * The handler counts (IRQS), EOIs at the LAPIC, IRETQs. At the end the guest prints
 * "IRQS=<handler entries> LATE=<late rounds> BADIIR=<IIR reads that were not THRE> N=<N>"
 * and triple-faults (empty IDT, UD2), which ends microvm with --no-reboot and QEMU with
 * -no-reboot. No INT3, POPCNT, XSAVE or FWAIT. */
        .ifndef N
        .set N, 240
        .endif
        .ifndef SPIN
        .set SPIN, 20000
        .endif
        .ifdef INSERVICE
        .set ROUNDS, 1
        .else
        .set ROUNDS, N
        .endif
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
irqs:   .long 0                 /* handler entries */
late:   .long 0                 /* rounds whose interrupt was not there right after the OUT */
badiir: .long 0                 /* handler IIR reads that did not identify THRE */
m_irqs: .asciz "IRQS="
m_late: .asciz " LATE="
m_bad:  .asciz " BADIIR="
m_n:    .asciz " N="

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
        cld                                     /* page tables: identity map of 4 GiB */
        mov $pml4, %edi
        mov $(6*4096/4), %ecx
        xor %eax, %eax
        rep stosl
        movl $(pdpt + 0x03), pml4
        mov $pdpt, %edi
        mov $(pd + 0x03), %eax
        mov $4, %ecx
2:      mov %eax, (%edi)
        add $4096, %eax
        add $8, %edi
        loop 2b
        mov $pd, %edi
        mov $0x83, %eax                         /* present, writable, 2 MiB page */
        xor %edx, %edx
        mov $2048, %ecx
3:      mov %eax, (%edi)
        mov %edx, 4(%edi)
        add $0x200000, %eax
        adc $0, %edx
        add $8, %edi
        loop 3b
        mov %cr4, %eax
        or $0x20, %eax                          /* CR4.PAE */
        mov %eax, %cr4
        mov $pml4, %eax
        mov %eax, %cr3
        mov $0xc0000080, %ecx                   /* IA32_EFER.LME */
        rdmsr
        or $0x100, %eax
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
        mov $stack_top, %esp
        lidt idt_desc
        mov $0x10, %ecx                         /* vectors 0x10-0xff: the counting handler */
        mov $handler, %eax
4:      call set_gate
        inc %ecx
        cmp $0x100, %ecx
        jb 4b
        mov $0x0f, %ecx                         /* the LAPIC's spurious vector: IRETQ only */
        mov $spurious, %eax
        call set_gate
        mov $0xff, %al                          /* OCW1: mask every 8259 input */
        out %al, $0x21
        out %al, $0xa1
        mov $0xfee000f0, %eax                   /* LAPIC SVR: software enable, vector 0x0f */
        movl $0x10f, (%rax)
        .ifndef EARLY
        mov $0x24, %eax                         /* pin 4: vector 0x24, fixed, physical, edge */
        call route4
        .endif
        mov $0x3fb, %dx
        mov $0x03, %al                          /* LCR: 8N1, DLAB off */
        out %al, %dx
        mov $0x3f9, %dx
        .ifdef EARLY
        mov $0x02, %al                          /* IER = ETBEI while pin 4 is still masked */
        .else
        xor %al, %al                            /* IER: nothing enabled yet */
        .endif
        out %al, %dx
        mov $0x3fc, %dx
        mov $0x0b, %al                          /* MCR: DTR, RTS, OUT2 */
        out %al, %dx
        .ifdef EARLY
        mov $0x24, %eax                         /* now route (and unmask) pin 4 */
        call route4
        .endif
        sti

        xor %ebx, %ebx                          /* round */
round:
        .ifdef VECTORS
        lea 0x10(%rbx), %eax                    /* vector 0x10 + round, fixed, edge, unmasked */
        call route4
        .endif
        mov irqs(%rip), %edi                    /* count before the edge */
        mov $0x3f9, %dx
        .ifdef RERAISE
        mov %bl, %al                            /* IER = ETBEI | (round & 1) * ERBFI */
        and $0x01, %al
        or $0x02, %al
        .else
        .ifndef HOLD
        xor %al, %al                            /* IER = 0: ETBEI off, INTR low */
        out %al, %dx
        .endif
        mov $0x02, %al                          /* IER = ETBEI: THRE armed, INTR high */
        .endif
        out %al, %dx
        cmp irqs(%rip), %edi                    /* taken already (at the OUT's VM entry)? */
        jne 6f
        incl late(%rip)
        mov $SPIN, %ecx                         /* wait a bounded while for it */
5:      cmp irqs(%rip), %edi
        jne 6f
        dec %ecx
        jnz 5b
6:      inc %ebx
        cmp $ROUNDS, %ebx
        jb round
        .ifdef INSERVICE
        mov $N, %ecx                            /* the handler makes the other N-1 edges */
13:     mov $SPIN, %eax
14:     cmpl $N, irqs(%rip)
        jae 15f
        dec %eax
        jnz 14b
        loop 13b
15:
        .endif

        cli
        mov $m_irqs, %esi
        call puts
        mov irqs(%rip), %eax
        call putdec
        mov $m_late, %esi
        call puts
        mov late(%rip), %eax
        call putdec
        mov $m_bad, %esi
        call puts
        mov badiir(%rip), %eax
        call putdec
        mov $m_n, %esi
        call puts
        mov $N, %eax
        call putdec
        mov $'\n', %al
        call putc
        lidt idt0(%rip)                         /* empty IDT, then an exception: triple fault */
        ud2

handler:
        push %rax
        push %rdx
        incl irqs(%rip)
        .ifndef HOLD
        .ifndef RERAISE
        mov $0x3fa, %dx                         /* IIR: identifies THRE and clears it */
        in %dx, %al
        and $0x0f, %al
        cmp $0x02, %al
        je 7f
        incl badiir(%rip)
7:
        .ifdef INSERVICE
        cmpl $N, irqs(%rip)                     /* the next edge, before this EOI */
        jae 16f
        mov $0x3f9, %dx
        xor %al, %al                            /* IER = 0, then ETBEI: low, high */
        out %al, %dx
        mov $0x02, %al
        out %al, %dx
16:
        .endif
        .endif
        .endif
        mov $0xfee000b0, %eax                   /* LAPIC EOI */
        movl $0, (%rax)
        pop %rdx
        pop %rax
        iretq
spurious:
        iretq

/* route4: IOAPIC redirection entry 4 = %eax (low dword), destination APIC 0 (high dword) */
route4: push %rdx
        mov $0xfec00000, %edx
        movl $0x18, (%rdx)
        mov %eax, 0x10(%rdx)
        movl $0x19, (%rdx)
        movl $0, 0x10(%rdx)
        pop %rdx
        ret
/* putc: %al to the THR once LSR.THRE is set */
putc:   push %rdx
        push %rax
8:      mov $0x3fd, %dx
        in %dx, %al
        test $0x20, %al
        jz 8b
        pop %rax
        mov $0x3f8, %dx
        out %al, %dx
        pop %rdx
        ret
/* puts: NUL-terminated string at %rsi */
puts:   push %rax
9:      lodsb
        test %al, %al
        jz 10f
        call putc
        jmp 9b
10:     pop %rax
        ret
/* putdec: %eax as unsigned decimal */
putdec: push %rax
        push %rbx
        push %rcx
        push %rdx
        mov $10, %ebx
        xor %ecx, %ecx
11:     xor %edx, %edx
        div %ebx
        push %rdx
        inc %ecx
        test %eax, %eax
        jnz 11b
12:     pop %rax
        add $'0', %al
        call putc
        loop 12b
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
        movw $0x8e00, 4(%rdi)
        shr $16, %eax
        mov %ax, 6(%rdi)
        movl $0, 8(%rdi)
        movl $0, 12(%rdi)
        pop %rax
        pop %rdi
        ret
