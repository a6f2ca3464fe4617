# dirtier.S - bare-metal x86 "dirtier" guest for migration tests.
#
# One source, two builds that share everything from the 32-bit entry on:
#
# * the boot block (default): a 512-byte MBR.  SeaBIOS loads it at 0x7c00 and
#   jumps to it in real mode; it switches to 32-bit flat protected mode;
# * the PVH kernel (``--defsym PVH=1``, linked by pvh.ld at 0x100000): an ELF
#   that QEMU's ``-kernel`` loads (hw/i386/x86.c x86_load_linux -> load_elfboot,
#   which reads the XEN_ELFNOTE_PHYS32_ENTRY note) and a firmware without a
#   full POST starts (qboot, ``-bios qboot.rom``: fw_cfg.c boot_pvh_from_fw_cfg).
#   PVH enters in 32-bit protected mode, paging off, with flat segments
#   whose GDT may be gone (xen/include/public/arch-x86/hvm/start_info.h): it
#   loads its own GDT and joins the boot block's code at pm32.
#
# From pm32 on both print "MHDIRTIER\r\n" on COM1, then loop forever:
#
#     for p in 0 .. region_pages-1 (ascending):  inc byte [region_base + p*4096]
#     passes += 1
#     write one byte (passes & 0xff) to COM1
#
# So at any instant the first bytes of the region's pages read
# v,v,...,v,v-1,...,v-1 (mod 256) in address order, which the host checks on
# a paused migration destination.
#
# The region is taken from the parameter block at offset 0x1F0 of the code
# (see README.md); the host patches a copy of the built image per test cell.
#
# Build: as --32 dirtier.S -o dirtier.o
#        ld -m elf_i386 -Ttext 0x7c00 -e _start --oformat binary dirtier.o -o dirtier.bin
# PVH:   as --32 --defsym PVH=1 dirtier.S -o dirtier-pvh.o
#        ld -m elf_i386 -T pvh.ld -s dirtier-pvh.o -o dirtier-pvh.elf

        .ifndef PVH
        .set PVH, 0
        .endif

        .set COM1,       0x3f8
        .set PARAM_OFF,  0x1f0
        .set PAGE_SIZE,  4096
        .set CODE_SEL,   0x08
        .set DATA_SEL,   0x10

        .text
        .globl _start
        .if PVH
        .code32
# PVH entry (the ELF note below names it): %ebx holds the start_info address,
# which the dirtier does not need.  No stack yet, and no interrupts.
_start:
        cli
        cld
        lgdtl   gdt_desc
        ljmpl   $CODE_SEL, $pm32
        .else
        .code16
_start:
        cli
        cld
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        ljmp    $0, $real_cs0           # normalise CS:IP (some BIOSes use 07c0:0000)
real_cs0:
        # Fast A20 via System Control Port A; bit 0 is "reset", keep it clear.
        inb     $0x92, %al
        orb     $0x02, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        lgdtl   gdt_desc
        movl    %cr0, %eax
        orl     $1, %eax                # PE
        movl    %eax, %cr0
        ljmpl   $CODE_SEL, $pm32
        .endif

        .code32
pm32:
        movw    $DATA_SEL, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    %ax, %fs
        movw    %ax, %gs
        movl    $0x7c00, %esp

        # COM1: no interrupts, 115200 8N1, FIFOs on, DTR+RTS.
        movw    $COM1+1, %dx
        xorb    %al, %al
        outb    %al, %dx                # IER = 0
        movw    $COM1+3, %dx
        movb    $0x80, %al
        outb    %al, %dx                # LCR: DLAB
        movw    $COM1+0, %dx
        movb    $1, %al
        outb    %al, %dx                # DLL = 1
        movw    $COM1+1, %dx
        xorb    %al, %al
        outb    %al, %dx                # DLM = 0
        movw    $COM1+3, %dx
        movb    $0x03, %al
        outb    %al, %dx                # LCR: 8N1, DLAB off
        movw    $COM1+2, %dx
        movb    $0x07, %al
        outb    %al, %dx                # FCR: enable + clear FIFOs
        movw    $COM1+4, %dx
        movb    $0x03, %al
        outb    %al, %dx                # MCR: DTR | RTS

        movl    $banner, %esi
print_banner:
        lodsb
        testb   %al, %al
        jz      banner_done
        call    putc
        jmp     print_banner
banner_done:

        movl    param_base, %ebx        # region base (bytes, page aligned)
        movl    param_pages, %ebp       # region size (pages)
        xorl    %edi, %edi              # pass counter

pass:
        movl    %ebx, %esi
        movl    %ebp, %ecx
        jecxz   pass_done               # 0 pages: heartbeats only
touch:
        incb    (%esi)
        addl    $PAGE_SIZE, %esi
        decl    %ecx
        jnz     touch
pass_done:
        incl    %edi
        movl    %edi, %eax              # heartbeat = passes & 0xff
        call    putc
        jmp     pass

# putc: write %al to COM1 once the transmit holding register is empty.
# Clobbers %edx, %ah.
putc:
        movb    %al, %ah
        movw    $COM1+5, %dx            # LSR
putc_wait:
        inb     %dx, %al
        testb   $0x20, %al              # THRE
        jz      putc_wait
        movw    $COM1, %dx
        movb    %ah, %al
        outb    %al, %dx
        ret

banner:
        .asciz  "MHDIRTIER\r\n"

        .balign 8
gdt:
        .quad   0                       # null
        .quad   0x00cf9a000000ffff      # 0x08: code, base 0, limit 4 GiB, 32-bit
        .quad   0x00cf92000000ffff      # 0x10: data, base 0, limit 4 GiB
gdt_end:
gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt

# Parameter block: 12 bytes at offset 0x1F0 of the code, little-endian.
        .org    PARAM_OFF
param_magic:
        .ascii  "MHPB"
param_base:
        .long   0x200000                # default: 2 MiB
param_pages:
        .long   25600                   # default: 100 MiB

        .org    0x1fe
        .byte   0x55, 0xaa

        .if PVH
# The PVH entry point for QEMU's ELF loader: a note named "Xen" of type
# XEN_ELFNOTE_PHYS32_ENTRY (18) holding the 32-bit physical entry address
# (xen/include/public/elfnote.h; QEMU hw/i386/x86.c read_pvh_start_addr).
        .section .note.Xen, "a", @note
        .balign 4
        .long   4                       # namesz: "Xen\0"
        .long   4                       # descsz
        .long   18                      # XEN_ELFNOTE_PHYS32_ENTRY
        .asciz  "Xen"
        .balign 4
        .long   _start
        .balign 4
        .endif
