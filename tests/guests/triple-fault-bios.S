/* A 64 KiB -bios image that triple-faults inside itself: from the reset vector to 32-bit
 * protected mode (paging off), an IDT with limit 0, then UD2. The VMM must stop with the
 * register dump instead of resetting into the same firmware forever. */
        .code16
        .text
start:
        cli
        lgdtl %cs:gdt_desc
        mov %cr0, %eax
        or $1, %eax
        mov %eax, %cr0
        ljmpl $0x08, $(0xf0000 + pm)
        .code32
pm:
        lidt 0xf0000 + idt0
        ud2
        .align 8
gdt:    .quad 0
        .quad 0x00cf9b000000ffff        /* 0x08: flat 32-bit code */
gdt_desc:
        .word 15
        .long 0xf0000 + gdt
idt0:   .word 0
        .long 0
        .code16
        .org 0xfff0
        ljmp $0xf000, $start
        .org 0x10000
