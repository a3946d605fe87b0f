//! Descriptor tables: the ring-3 segments in a GDT of our own, and the IDT
//! gates that send every vector user mode can raise to `entry.rs`.

use core::arch::asm;

use super::entry::*;
use super::kpage::KState;

/// Installs the GDT (hyperlight's kernel entries plus user data and code)
/// on the kernel page, and points the IDT's gates at our vectors.
///
/// # Safety
/// Kernel mode, single vCPU, once, before user mode is entered; the live
/// GDT and IDT are hyperlight-guest-bin's valid tables.
pub unsafe fn install(k: &mut KState) {
    // SAFETY: the caller's contract; the writes keep both tables valid
    // (copied kernel entries plus two ring-3 entries; the IDT gates keep
    // selector, IST and type).
    unsafe {
        let mut gdtr = [0u8; 10];
        asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack));
        let base = u64::from_le_bytes([
            gdtr[2], gdtr[3], gdtr[4], gdtr[5], gdtr[6], gdtr[7], gdtr[8], gdtr[9],
        ]) as *const u64;
        for i in 0..5 {
            let mut d = base.add(i).read();
            // Pre-set the accessed bit of code/data descriptors so that the CPU
            // never writes the GDT (it may be a read-only copy-on-write page).
            if i == 1 || i == 2 {
                d |= 1 << 40;
            }
            k.gdt[i] = d;
        }
        k.gdt[5] = 0x00CF_F300_0000_FFFF; // user data, DPL 3, accessed
        k.gdt[6] = 0x00AF_FB00_0000_FFFF; // user code, 64-bit, DPL 3, accessed
        let mut ptr = [0u8; 10];
        ptr[0..2].copy_from_slice(&((8 * 7 - 1) as u16).to_le_bytes());
        ptr[2..10].copy_from_slice(&(k.gdt.as_ptr() as u64).to_le_bytes());
        asm!("lgdt [{}]", in(reg) ptr.as_ptr(), options(nostack));

        let mut idtr = [0u8; 10];
        asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack));
        let idt = u64::from_le_bytes([
            idtr[2], idtr[3], idtr[4], idtr[5], idtr[6], idtr[7], idtr[8], idtr[9],
        ]) as *mut u64;
        let entries: [(usize, unsafe extern "C" fn()); 21] = [
            (0, hljs_vec_0),
            (1, hljs_vec_1),
            (3, hljs_vec_3),
            (4, hljs_vec_4),
            (5, hljs_vec_5),
            (6, hljs_vec_6),
            (7, hljs_vec_7),
            (9, hljs_vec_9),
            (10, hljs_vec_10),
            (11, hljs_vec_11),
            (12, hljs_vec_12),
            (13, hljs_vec_13),
            (14, hljs_vec_14),
            (16, hljs_vec_16),
            (17, hljs_vec_17),
            (19, hljs_vec_19),
            (20, hljs_vec_20),
            (21, hljs_vec_21),
            (28, hljs_vec_28),
            (29, hljs_vec_29),
            (30, hljs_vec_30),
        ];
        for (v, entry) in entries {
            gate(idt, v, entry as *const () as u64);
        }
    }
}

/// Points IDT vector `v` at `handler`, keeping its selector, IST and type.
///
/// # Safety
/// `idt` is the live IDT, with at least `v + 1` gates.
unsafe fn gate(idt: *mut u64, v: usize, handler: u64) {
    // SAFETY: the caller's contract; each gate is two u64s.
    unsafe {
        let lo = idt.add(2 * v).read_volatile();
        let new_lo =
            (lo & 0x0000_ffff_ffff_0000) | (handler & 0xffff) | ((handler & 0xffff_0000) << 32);
        idt.add(2 * v).write_volatile(new_lo);
        idt.add(2 * v + 1).write_volatile(handler >> 32);
    }
}
