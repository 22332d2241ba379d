//! The entry from GRUB: the multiboot2 header, and the 32-bit trampoline that GRUB jumps to
//! in protected mode (paging off, interrupts off, EAX = the multiboot2 magic, EBX = the boot
//! information's physical address). It zeroes `.bss`, checks for long mode, identity-maps the
//! first 4 GiB with 2 MiB pages, enables SSE (the precompiled `core` uses it) and long mode,
//! and calls [`crate::kernel_main`] on a 256 KiB boot stack.
//!
//! The same image boots from BIOS GRUB and from UEFI GRUB: both enter multiboot2 kernels the
//! same way.

/// The magic GRUB leaves in EAX for a multiboot2 kernel.
pub const MULTIBOOT2_BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

// The header asks for nothing but an optional framebuffer (so that on UEFI GRUB passes the GOP
// framebuffer, which a Gen2 VM's synthetic video reuses as VRAM).
core::arch::global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 8
multiboot_header:
    .long 0xE85250D6
    .long 0
    .long multiboot_header_end - multiboot_header
    .long 0x100000000 - (0xE85250D6 + (multiboot_header_end - multiboot_header))
    .balign 8
    .short 5, 1
    .long 20, 0, 0, 0
    .balign 8
    .short 0, 0
    .long 8
multiboot_header_end:

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
boot_stack:
    .skip 256 * 1024
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_pointer:
    .short boot_gdt_pointer - boot_gdt - 1
    .long boot_gdt
no_long_mode_message:
    .asciz "hyperv-kernel: this processor has no long mode (x86_64); halting\r\n"

    .section .text.boot, "ax"
    .code32
    .global multiboot_entry
multiboot_entry:
    cli
    cld
    mov %eax, %ebp
    mov %ebx, %esi
    mov $boot_stack_top, %esp

    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb no_long_mode
    mov $0x80000001, %eax
    cpuid
    test $(1 << 29), %edx
    jz no_long_mode

    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4
    mov $boot_pd, %eax
    or $3, %eax
    mov %eax, boot_pdpt
    add $4096, %eax
    mov %eax, boot_pdpt + 8
    add $4096, %eax
    mov %eax, boot_pdpt + 16
    add $4096, %eax
    mov %eax, boot_pdpt + 24

    xor %ecx, %ecx
1:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jb 1b

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $((1 << 5) | (1 << 9) | (1 << 10)), %eax
    mov %eax, %cr4
    mov $0xC0000080, %ecx
    rdmsr
    or $(1 << 8), %eax
    wrmsr
    mov %cr0, %eax
    and $0xFFFFFFFB, %eax
    or $0x80000003, %eax
    mov %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $long_mode_entry

no_long_mode:
    mov $no_long_mode_message, %esi
2:
    movb (%esi), %al
    test %al, %al
    jz 3f
    mov $0x3F8, %dx
    outb %al, %dx
    inc %esi
    jmp 2b
3:
    mov $0xF4, %dx
    mov $0x11, %al
    outb %al, %dx
4:
    cli
    hlt
    jmp 4b

    .code64
long_mode_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %ebp, %edi
    mov %esi, %esi
    xor %ebp, %ebp
    call kernel_main
5:
    cli
    hlt
    jmp 5b
"#,
    options(att_syntax)
);
