//! The embedded guest must run on every hypervisor, including paravirtual KVM
//! whose kernel-mode emulator dies on SSE and x87: no such instruction may
//! appear anywhere in it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use iced_x86::{Decoder, DecoderOptions, Instruction, InstructionInfoFactory, OpKind, Register};
use object::{Object, ObjectSection, SectionFlags};

/// x87 state save/restore used by the exception entry to preserve user state;
/// these execute without touching SSE registers (measured on kvm-pvm).
const ALLOWED: &[iced_x86::Mnemonic] = &[
    iced_x86::Mnemonic::Fxsave,
    iced_x86::Mnemonic::Fxsave64,
    iced_x86::Mnemonic::Fxrstor,
    iced_x86::Mnemonic::Fxrstor64,
];

fn is_vector_or_x87(r: Register) -> bool {
    r.is_xmm() || r.is_ymm() || r.is_zmm() || r.is_mm() || r.is_st()
}

#[test]
fn the_guest_has_no_sse_mmx_or_x87_instruction() {
    let elf = object::File::parse(hyperlight_js_engine::GUEST).expect("guest is an ELF file");
    let mut checked = 0usize;
    let mut offenders = Vec::new();
    let mut info = InstructionInfoFactory::new();
    for section in elf.sections() {
        let SectionFlags::Elf { sh_flags } = section.flags() else {
            continue;
        };
        if sh_flags & u64::from(object::elf::SHF_EXECINSTR) == 0 {
            continue;
        }
        let data = section.data().expect("section data");
        let mut decoder = Decoder::with_ip(64, data, section.address(), DecoderOptions::NONE);
        let mut insn = Instruction::default();
        while decoder.can_decode() {
            decoder.decode_out(&mut insn);
            checked += 1;
            if insn.is_invalid() || ALLOWED.contains(&insn.mnemonic()) {
                continue;
            }
            let regs = info
                .info(&insn)
                .used_registers()
                .iter()
                .any(|u| is_vector_or_x87(u.register()));
            let ops = (0..insn.op_count()).any(|i| {
                insn.op_kind(i) == OpKind::Register && is_vector_or_x87(insn.op_register(i))
            });
            let fpu = insn.cpuid_features().iter().any(|f| {
                matches!(
                    f,
                    iced_x86::CpuidFeature::FPU
                        | iced_x86::CpuidFeature::FPU287
                        | iced_x86::CpuidFeature::FPU387
                ) || format!("{f:?}").starts_with("SSE")
                    || format!("{f:?}").starts_with("AVX")
                    || format!("{f:?}") == "MMX"
            });
            if regs || ops || fpu {
                offenders.push(format!("{:#x}: {insn}", insn.ip()));
            }
        }
    }
    assert!(
        checked > 100_000,
        "decoded only {checked} instructions: wrong sections?"
    );
    assert!(
        offenders.is_empty(),
        "{} SSE/x87 instructions, first: {:?}",
        offenders.len(),
        &offenders[..offenders.len().min(10)]
    );
}
