//! Our own entry for calls from the host, replacing hyperlight-guest-bin's.
//!
//! hyperlight-guest-bin decodes every call (virtqueue poll, flatbuffer
//! decode, result encode) in kernel mode. On kvm-pvm kernel mode is emulated
//! at ~1 µs per instruction, which made a trivial call cost ~17 ms. Here the
//! kernel part of a call is a handful of instructions: [`hljs_dispatch`]
//! drops straight to user mode, where [`serve_one`] does all the transport
//! and decoding natively, and comes back through one `ud2` system call.
//!
//! The host learns the dispatch address from `rax` at the halt that ends
//! initialisation, so [`finish_init`] ends initialisation itself (instead of
//! returning to hyperlight-guest-bin's `generic_init`) with our address.
//! Until user mode is enabled (by `LoadRuntime`), the same [`serve_one`]
//! runs in kernel mode, exactly like the stock guest.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::{asm, global_asm};

use hyperlight_common::flatbuffer_wrappers::function_call::{FunctionCall, FunctionCallType};
use hyperlight_common::flatbuffer_wrappers::function_types::{
    FunctionCallResult, ParameterValue, ReturnValue,
};
use hyperlight_common::flatbuffer_wrappers::guest_error::{ErrorCode, GuestError};
use hyperlight_common::outb::VmAction;
use hyperlight_guest::error::HyperlightGuestError;
use hyperlight_js_abi::guest_fn;

use crate::transport::{self, Action, Transport};
use crate::{exports, usermode};

global_asm!(
    // The host enters here at CPL0 for every call, with a 16-byte aligned
    // stack and ZF set when the TLB must be flushed (first call after a
    // restore). Toggling CR4.PGE flushes it, global entries included.
    //
    // With user mode on, the call runs on the kernel stack in scratch
    // (`usermode::KERNEL_STACK_TOP`), not on the stack `finish_init` halted
    // with: a restore leaves that one copy-on-write, so a call's first push
    // would cost a kernel fault or a replacement in emulated code (~90
    // instructions), where a scratch page the restore zeroed costs KVM one
    // shadow fault and the guest nothing. Nothing above the stack pointer
    // is ever read again: every call starts here.
    ".global hljs_dispatch",
    "hljs_dispatch:",
    ".cfi_startproc",
    ".cfi_undefined rip",
    "jnz 2f",
    "mov rdi, cr4",
    "xor rdi, 0x80",
    "mov cr4, rdi",
    "xor rdi, 0x80",
    "mov cr4, rdi",
    "2:",
    "cmp byte ptr [rip + {kpage} + {k_enabled}], 0",
    "je 3f",
    "mov rsp, {kstack_top}",
    "3:",
    "call {kernel_dispatch}",
    "mov dx, {halt}",
    "out dx, eax",
    "cli",
    "hlt",
    ".cfi_endproc",
    kernel_dispatch = sym kernel_dispatch,
    halt = const VmAction::Halt as u16,
    kpage = sym usermode::KPAGE_SYMBOL,
    k_enabled = const usermode::K_ENABLED,
    kstack_top = const usermode::KERNEL_STACK_TOP,
);

unsafe extern "C" {
    fn hljs_dispatch();
}

/// Ends guest initialisation: readies the transport for the host's first
/// snapshot and halts with our dispatch address in `rax`, where the host
/// reads it. Never returns; the host enters [`hljs_dispatch`] from now on,
/// on the stack as it is at this halt.
pub fn finish_init() -> ! {
    // hyperlight-guest-bin's logger writes through its own transport context,
    // which this guest has replaced: keep it silent.
    log::set_max_level(log::LevelFilter::Off);
    if let Err(e) = transport::install().and_then(|()| transport::with(Transport::checkpoint)) {
        panic!("transport set-up failed: {e}");
    }
    // SAFETY: the halt protocol of hyperlight 0.18: `out` to the halt port,
    // then `hlt`; the host requires a 16-byte aligned stack at this point.
    unsafe {
        asm!(
            "and rsp, -16",
            "out dx, eax",
            "cli",
            "hlt",
            in("rax") hljs_dispatch as *const () as u64,
            in("dx") VmAction::Halt as u16,
            options(noreturn)
        )
    }
}

/// Kernel part of a call: refresh the transport after a restore, then serve
/// the call in user mode when it is enabled.
extern "C" fn kernel_dispatch() {
    usermode::call_begins(transport::generation());
    if usermode::kernel_enabled() {
        usermode::serve_in_user(user_dispatch);
    } else {
        serve_one();
    }
}

/// First user-mode function of a call.
extern "C" fn user_dispatch(_: u64) -> ! {
    serve_one();
    usermode::syscall(usermode::SYS_EXIT, 0);
    // SYS_EXIT does not come back.
    loop {
        core::hint::spin_loop();
    }
}

/// Receives one call from the host, runs it and sends the result. A
/// transport failure aborts the call: the host sees a guest abort.
fn serve_one() {
    let generation = usermode::call_generation();
    let action = match transport::with(|t| {
        t.refresh(generation)?;
        t.receive()
    }) {
        Ok(action) => action,
        Err(e) => panic!("could not receive the host's call: {e}"),
    };
    let sent = match action {
        Action::Call(cid, call) => {
            let result = call_guest_function(call).map_err(|e| GuestError::new(e.kind, e.message));
            transport::with(|t| t.send_result(cid, FunctionCallResult::new(result)))
        }
        Action::Checkpoint => transport::with(Transport::checkpoint),
    };
    if let Err(e) = sent {
        panic!("could not answer the host: {e}");
    }
}

type CallResult = Result<ReturnValue, HyperlightGuestError>;

fn mismatch(name: &str) -> HyperlightGuestError {
    HyperlightGuestError::new(
        ErrorCode::GuestFunctionParameterTypeMismatch,
        format!("wrong parameters for guest function {name}"),
    )
}

/// Runs the guest function the host named.
fn call_guest_function(call: FunctionCall) -> CallResult {
    if call.function_call_type() != FunctionCallType::Guest {
        return Err(HyperlightGuestError::new(
            ErrorCode::GuestError,
            String::from("only guest function calls can be dispatched"),
        ));
    }
    let name = call.function_name;
    let mut args = Args(call.parameters.unwrap_or_default().into_iter());
    let out = match name.as_str() {
        guest_fn::LOAD_RUNTIME => {
            let (Some(stack), Some(mem), Some(output), Some(fns), Some(user)) = (
                args.u64(),
                args.u64(),
                args.u64(),
                args.string(),
                args.bool(),
            ) else {
                return Err(mismatch(&name));
            };
            args.end(&name)?;
            ReturnValue::String(exports::load_runtime(stack, mem, output, fns, user))
        }
        guest_fn::REGISTER_HANDLER => {
            let (Some(key), Some(code)) = (args.string(), args.string()) else {
                return Err(mismatch(&name));
            };
            args.end(&name)?;
            ReturnValue::String(exports::register_handler(key, code))
        }
        guest_fn::ADD_MODULE => {
            let (Some(module), Some(source)) = (args.string(), args.string()) else {
                return Err(mismatch(&name));
            };
            args.end(&name)?;
            ReturnValue::String(exports::add_module(module, source))
        }
        guest_fn::LOAD_MODULE => {
            let Some(module) = args.string() else {
                return Err(mismatch(&name));
            };
            args.end(&name)?;
            ReturnValue::String(exports::load_module(module))
        }
        guest_fn::CALL_HANDLER => {
            let (
                Some(key),
                Some(event),
                Some(context),
                Some(gc),
                Some(seed),
                Some(now),
                Some(hz),
                Some(_working_set),
            ) = (
                args.string(),
                args.string(),
                args.string(),
                args.bool(),
                args.u64(),
                args.u64(),
                args.u64(),
                args.bytes(),
            )
            else {
                return Err(mismatch(&name));
            };
            args.end(&name)?;
            // The working set was replayed by the kernel before user mode
            // ran (`usermode::working_set`): here it is only bytes.
            ReturnValue::String(exports::call_handler(
                key, event, context, gc, seed, now, hz,
            ))
        }
        guest_fn::PROBE_READ => {
            let Some(addr) = args.u64() else {
                return Err(mismatch(&name));
            };
            args.end(&name)?;
            ReturnValue::String(exports::probe_read(addr))
        }
        guest_fn::TRAP_COUNT => {
            args.end(&name)?;
            ReturnValue::ULong(usermode::trap_count())
        }
        guest_fn::SCRIBBLE => {
            let (Some(write), Some(seek)) = (args.string(), args.string()) else {
                return Err(mismatch(&name));
            };
            args.end(&name)?;
            ReturnValue::String(exports::scribble(write, seek))
        }
        guest_fn::STACK_USE => {
            args.end(&name)?;
            let [[kernel, kernel_size], [exception, exception_size]] = usermode::stack_use();
            ReturnValue::String(format!(
                "kernel={kernel}/{kernel_size} exception={exception}/{exception_size}"
            ))
        }
        guest_fn::WORKING_SET => {
            args.end(&name)?;
            let mut out = String::new();
            for entry in usermode::recorded() {
                out.push_str(&format!("{entry:016x}"));
            }
            ReturnValue::String(out)
        }
        guest_fn::KERNEL_STATS => {
            args.end(&name)?;
            let mut out = String::new();
            if usermode::in_user() && usermode::count_entries() {
                for kind in usermode::Entry::ALL {
                    let (count, cycles) = usermode::last_call_entries(kind);
                    out.push_str(&format!("{} {count} {cycles}\n", kind.name()));
                }
            }
            ReturnValue::String(out)
        }
        _ => {
            return Err(HyperlightGuestError::new(
                ErrorCode::GuestFunctionNotFound,
                format!("no guest function named {name:?}"),
            ));
        }
    };
    Ok(out)
}

/// The parameters of one call, taken in order.
struct Args(<Vec<ParameterValue> as IntoIterator>::IntoIter);

impl Args {
    fn u64(&mut self) -> Option<u64> {
        match self.0.next()? {
            ParameterValue::ULong(v) => Some(v),
            _ => None,
        }
    }

    fn bool(&mut self) -> Option<bool> {
        match self.0.next()? {
            ParameterValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        match self.0.next()? {
            ParameterValue::VecBytes(v) => Some(v),
            _ => None,
        }
    }

    fn string(&mut self) -> Option<String> {
        match self.0.next()? {
            ParameterValue::String(v) => Some(v),
            _ => None,
        }
    }

    fn end(&mut self, name: &str) -> Result<(), HyperlightGuestError> {
        match self.0.next() {
            None => Ok(()),
            Some(_) => Err(mismatch(name)),
        }
    }
}
