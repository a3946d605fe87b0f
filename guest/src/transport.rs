//! The guest's end of hyperlight's virtqueue transport, runnable in user mode.
//!
//! hyperlight-guest's own transport context hands every received buffer out
//! through a fresh page-table alias, so each call edits page tables: kernel
//! work, emulated on kvm-pvm. This one speaks the same wire protocol over the
//! same rings and pools (hyperlight-common's `VirtqProducer`), but copies a
//! received buffer out of its pool slot instead of aliasing it, so it only
//! ever touches the transport arena and user mode can run it natively. The
//! only privileged step left is the `out` that notifies the host, which the
//! kernel performs for user mode (see `usermode::traps`).
//!
//! It replaces hyperlight-guest's context from the end of initialisation on
//! (see `dispatch::finish_init`), which then is never used again.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicU16, Ordering};

use flatbuffers::FlatBufferBuilder;
use hyperlight_common::flatbuffer_wrappers::function_call::{FunctionCall, FunctionCallType};
use hyperlight_common::flatbuffer_wrappers::function_types::{
    Bytes, FunctionCallResult, ParameterValue, ReturnType, ReturnValue,
};
use hyperlight_common::layout::{QueueDims, TransportArena};
use hyperlight_common::outb::OutBAction;
use hyperlight_common::transport::{
    Buf, EncodedMessage, ExternalValues, MailboxValue, MsgHeader, MsgKind, SIZE_PREFIX_LEN,
    size_prefix_payload_len, size_prefixed_len,
};
use hyperlight_common::virtq::{
    BufferLease, BufferMap, G2H_LOWER_SLOT_COUNT, G2H_LOWER_SLOT_SIZE, Layout, MemOps, Notifier,
    QueueStats, Segments, SlotLayout, SlotPool, UsedChain, VirtqError, VirtqProducer,
};
use hyperlight_common::vmem::PAGE_SIZE;
use hyperlight_guest::layout;

/// A transport failure, as text for the error reply or the abort.
pub type Error = String;

/// Memory access bounded by the transport arena.
#[derive(Clone, Copy)]
struct ArenaMem {
    lo: u64,
    hi: u64,
}

/// An access outside the arena, or a misaligned ring flag.
#[derive(Debug)]
struct OutOfArena;

impl ArenaMem {
    fn ptr(&self, addr: u64, len: usize) -> Result<*mut u8, OutOfArena> {
        let end = addr.checked_add(len as u64).ok_or(OutOfArena)?;
        if addr < self.lo || end > self.hi {
            return Err(OutOfArena);
        }
        Ok(addr as *mut u8)
    }

    fn atomic(&self, addr: u64) -> Result<&AtomicU16, OutOfArena> {
        let p = self.ptr(addr, 2)?;
        if !(p as usize).is_multiple_of(2) {
            return Err(OutOfArena);
        }
        // SAFETY: an aligned u16 inside the live arena.
        Ok(unsafe { &*p.cast::<AtomicU16>() })
    }
}

// SAFETY: every access is bounds-checked against the arena, which stays
// mapped for the guest's lifetime; ring flags use aligned atomics.
unsafe impl MemOps for ArenaMem {
    type Error = OutOfArena;

    fn read(&self, addr: u64, dst: &mut [u8]) -> Result<(), OutOfArena> {
        let src = self.ptr(addr, dst.len())?;
        // SAFETY: `dst` is guest heap or stack, never inside the arena.
        unsafe { src.copy_to_nonoverlapping(dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn write(&self, addr: u64, src: &[u8]) -> Result<(), OutOfArena> {
        let dst = self.ptr(addr, src.len())?;
        // SAFETY: as above, the ranges are disjoint.
        unsafe { src.as_ptr().copy_to_nonoverlapping(dst, src.len()) };
        Ok(())
    }

    fn load_acquire(&self, addr: u64) -> Result<u16, OutOfArena> {
        Ok(self.atomic(addr)?.load(Ordering::Acquire))
    }

    fn store_release(&self, addr: u64, val: u16) -> Result<(), OutOfArena> {
        self.atomic(addr)?.store(val, Ordering::Release);
        Ok(())
    }

    unsafe fn as_slice(&self, addr: u64, len: usize) -> Result<&[u8], OutOfArena> {
        let p = self.ptr(addr, len)?;
        // SAFETY: the caller owns this descriptor range.
        Ok(unsafe { core::slice::from_raw_parts(p, len) })
    }

    #[allow(clippy::mut_from_ref)]
    unsafe fn as_mut_slice(&self, addr: u64, len: usize) -> Result<&mut [u8], OutOfArena> {
        let p = self.ptr(addr, len)?;
        // SAFETY: the caller owns this descriptor range exclusively.
        Ok(unsafe { core::slice::from_raw_parts_mut(p, len) })
    }
}

impl BufferMap for ArenaMem {
    type Mapping = Vec<u8>;

    /// Copies the received bytes out and frees the slot at once: no page
    /// tables are touched, and a copy in user mode costs nanoseconds.
    unsafe fn map_buffer(&self, lease: BufferLease, written: usize) -> Result<Vec<u8>, OutOfArena> {
        let alloc = lease.allocation();
        if written > alloc.len as usize {
            return Err(OutOfArena);
        }
        let src = self.ptr(alloc.addr, written)?;
        // SAFETY: the lease owns `written` initialized bytes at `src`.
        Ok(unsafe { core::slice::from_raw_parts(src, written) }.to_vec())
    }
}

/// Tells the host there is work on the guest-to-host queue.
#[derive(Clone, Copy)]
struct Notify;

impl Notifier for Notify {
    fn notify(&self, _: QueueStats) {
        // SAFETY: the host's virtqueue port; in user mode the kernel does
        // this `out` on our behalf.
        unsafe {
            core::arch::asm!(
                "out dx, eax",
                in("dx") OutBAction::VirtqNotify as u16,
                in("eax") 0u32,
                options(nostack, preserves_flags)
            )
        };
    }
}

/// The host-to-guest queue never notifies: the host polls it at each entry.
#[derive(Clone, Copy)]
struct Quiet;

impl Notifier for Quiet {
    fn notify(&self, _: QueueStats) {}
}

/// What one entry from the host asks for.
pub enum Action {
    /// Run a guest function and answer under this correlation id.
    Call(u32, FunctionCall),
    /// Put the queues in their canonical state for a snapshot.
    Checkpoint,
}

/// Both queues and their bookkeeping.
pub struct Transport {
    g2h: VirtqProducer<ArenaMem, Notify>,
    h2g: VirtqProducer<ArenaMem, Quiet>,
    h2g_slot: usize,
    mailbox: u64,
    generation: u64,
    next_cid: u32,
    /// Where the arena is mapped, `[lo, hi)`.
    arena: (u64, u64),
}

struct Global(RefCell<Option<Transport>>);
// SAFETY: one vCPU, and guest entries are serialized.
unsafe impl Sync for Global {}
static TRANSPORT: Global = Global(RefCell::new(None));

impl Transport {
    /// Where the arena is mapped, `[lo, hi)` (a test hook reads it all).
    pub fn arena(&self) -> (u64, u64) {
        self.arena
    }
}

/// Runs `f` with the transport, if it is installed and not in use.
pub fn with<R>(f: impl FnOnce(&mut Transport) -> Result<R, Error>) -> Result<R, Error> {
    let mut t = TRANSPORT
        .0
        .try_borrow_mut()
        .map_err(|_| String::from("transport in use"))?;
    f(t.as_mut()
        .ok_or_else(|| String::from("transport not installed"))?)
}

/// The transport layout the host publishes in scratch metadata.
struct Published {
    g2h: QueueDims,
    h2g: QueueDims,
    g2h_buffer: usize,
    h2g_buffer: usize,
    arena: TransportArena,
    /// Where the arena is mapped: `[lo, hi)`.
    lo: u64,
    hi: u64,
}

/// Reads the published layout. Kernel mode (the metadata page is
/// supervisor-only).
fn published() -> Option<Published> {
    // SAFETY: the host wrote this metadata before the first entry.
    let read = |p: *mut u64| unsafe { p.read_volatile() } as usize;
    let g2h = QueueDims::new(
        read(layout::g2h_queue_size_gva()),
        read(layout::g2h_pool_pages_gva()),
    )?;
    let h2g = QueueDims::new(
        read(layout::h2g_queue_size_gva()),
        read(layout::h2g_pool_pages_gva()),
    )?;
    let gpa = read(layout::transport_arena_gpa_gva()) as u64;
    let arena = TransportArena::new(gpa, g2h, h2g)?;
    let lo = hyperlight_guest_bin::paging::phys_to_virt(gpa)? as u64;
    Some(Published {
        g2h,
        h2g,
        g2h_buffer: read(layout::g2h_buffer_size_gva()),
        h2g_buffer: read(layout::h2g_buffer_size_gva()),
        arena,
        lo,
        hi: lo + arena.size() as u64,
    })
}

/// The arena's range `[lo, hi)`, which user mode may touch. Kernel mode.
pub fn arena_range() -> Option<(u64, u64)> {
    published().map(|p| (p.lo, p.hi))
}

/// The receive buffers that the host's next two calls fill once the queues
/// are in their canonical state (a checkpoint has just reset and prefilled
/// them): the ones the first two descriptors of the host-to-guest ring
/// post. The first one's address in the arena and its capacity, then the
/// second one's address (0 if there is none); `None` if the first does not
/// lie in the arena. Kernel mode.
pub fn h2g_buffers() -> Option<[u64; 3]> {
    let p = published()?;
    let gva = |gpa: u64| {
        gpa.checked_sub(p.arena.base_addr())
            .and_then(|off| p.lo.checked_add(off))
    };
    let ring = gva(p.arena.h2g_ring_addr())?;
    let buffer = |i: u64| -> Option<(u64, u64)> {
        let desc = ring.checked_add(16 * i)?;
        if desc.checked_add(16)? > p.hi {
            return None;
        }
        // SAFETY: a descriptor (addr u64, len u32, id u16, flags u16) inside
        // the arena, which stays mapped for the guest's lifetime.
        let (addr, len) = unsafe {
            (
                (desc as *const u64).read_volatile(),
                ((desc + 8) as *const u32).read_volatile(),
            )
        };
        // Our pools hand out arena addresses as we map them (see `install`).
        let at = if (p.lo..p.hi).contains(&addr) {
            addr
        } else {
            gva(addr)?
        };
        let len = u64::from(len);
        (at >= p.lo && at.checked_add(len)? <= p.hi).then_some((at, len))
    };
    let (first, cap) = buffer(0)?;
    let second = if p.h2g.size().get() > 1 {
        buffer(1).map_or(0, |(at, _)| at)
    } else {
        0
    };
    Some([first, cap, second])
}

/// The current snapshot generation. Kernel mode.
pub fn generation() -> u64 {
    // SAFETY: the metadata page is mapped for the guest's lifetime.
    unsafe { layout::snapshot_generation_gva().read_volatile() }
}

/// Builds the transport over the host's queues and installs it. Kernel mode,
/// once, at the end of initialisation; [`Transport::checkpoint`] must follow.
pub fn install() -> Result<(), Error> {
    let bad = |what: &str| format!("invalid transport layout: {what}");
    let Published {
        g2h,
        h2g,
        g2h_buffer: g2h_buf,
        h2g_buffer: h2g_buf,
        arena,
        lo,
        hi,
    } = published().ok_or_else(|| bad("queue dimensions or arena"))?;
    let gva = |a: u64| lo + (a - arena.base_addr());
    let mem = ArenaMem { lo, hi };

    // SAFETY: both rings lie in the arena, disjoint, as the host laid them out.
    let g2h_layout = unsafe { Layout::from_base(gva(arena.g2h_ring_addr()), g2h.size()) }
        .map_err(|e| format!("G2H ring: {e:?}"))?;
    // SAFETY: as above.
    let h2g_layout = unsafe { Layout::from_base(gva(arena.h2g_ring_addr()), h2g.size()) }
        .map_err(|e| format!("H2G ring: {e:?}"))?;

    let g2h_pool = {
        let base = gva(arena.g2h_pool_addr());
        let len = g2h.pool_pages().get() * PAGE_SIZE;
        let lower = SlotLayout::new(base, G2H_LOWER_SLOT_SIZE, G2H_LOWER_SLOT_COUNT)
            .map_err(|e| format!("G2H pool: {e:?}"))?;
        let upper_len = len
            .checked_sub(G2H_LOWER_SLOT_SIZE * G2H_LOWER_SLOT_COUNT)
            .ok_or_else(|| bad("G2H pool too small"))?;
        let upper = SlotLayout::new(lower.end_addr(), g2h_buf, upper_len / g2h_buf.max(1))
            .map_err(|e| format!("G2H pool: {e:?}"))?;
        SlotPool::new_tiered(lower, upper).map_err(|e| format!("G2H pool: {e:?}"))?
    };
    let h2g_pool = {
        let base = gva(arena.h2g_pool_addr());
        let len = h2g.pool_pages().get() * PAGE_SIZE;
        let layout = SlotLayout::new(base, h2g_buf, len / h2g_buf.max(1))
            .map_err(|e| format!("H2G pool: {e:?}"))?;
        SlotPool::new(layout).map_err(|e| format!("H2G pool: {e:?}"))?
    };

    let t = Transport {
        g2h: VirtqProducer::new(g2h_layout, mem, Notify, g2h_pool),
        h2g: VirtqProducer::new(h2g_layout, mem, Quiet, h2g_pool),
        h2g_slot: h2g_buf,
        mailbox: gva(arena.mbx_addr()),
        generation: generation(),
        next_cid: 1,
        arena: (lo, hi),
    };
    let mut slot = TRANSPORT
        .0
        .try_borrow_mut()
        .map_err(|_| String::from("transport in use"))?;
    *slot = Some(t);
    Ok(())
}

fn verr(what: &str, e: VirtqError) -> Error {
    format!("{what}: {e}")
}

impl Transport {
    /// After a restore (a new `generation`), takes back the pool slots the
    /// snapshot recorded as in use; the rings themselves are unchanged.
    pub fn refresh(&mut self, generation: u64) -> Result<(), Error> {
        if self.generation == generation {
            return Ok(());
        }
        // SAFETY: a new generation means a restore: the host re-posted only
        // the chains of the canonical checkpoint state, and nothing else runs.
        unsafe {
            self.g2h
                .reclaim_slots()
                .map_err(|e| verr("G2H slot recovery", e))?;
            self.h2g
                .reclaim_slots()
                .map_err(|e| verr("H2G slot recovery", e))?;
        }
        self.generation = generation;
        Ok(())
    }

    /// Receives the host's request for this entry.
    pub fn receive(&mut self) -> Result<Action, Error> {
        self.g2h.reclaim().map_err(|e| verr("G2H reclaim", e))?;
        let mut payload = self.next_h2g()?;
        let header = payload
            .split_to(MsgHeader::SIZE)
            .ok_or_else(|| String::from("H2G message without header"))?
            .into_bytes();
        let header = MsgHeader::from_bytes(&header)
            .ok_or_else(|| String::from("H2G message with a bad header"))?;
        match header.kind {
            MsgKind::SnapshotCheckpoint => return Ok(Action::Checkpoint),
            MsgKind::Request if header.cid != 0 => {}
            _ => return Err(String::from("H2G message with bad framing")),
        }
        let want = header.payload_len as usize;
        if payload.len() > want {
            return Err(String::from("H2G message longer than declared"));
        }
        while payload.len() < want {
            let more = self.next_h2g()?;
            if more.is_empty() || payload.len() + more.len() > want {
                return Err(String::from(
                    "H2G continuation does not fit the declared length",
                ));
            }
            payload.append(more);
        }
        let (control, mut externals) = split_control(payload)?;
        let call = FunctionCall::decode(&control, &mut externals)
            .map_err(|e| format!("cannot decode the guest call: {e:?}"))?;
        Ok(Action::Call(header.cid, call))
    }

    fn next_h2g(&mut self) -> Result<Segments, Error> {
        match self.h2g.poll().map_err(|e| verr("H2G poll", e))? {
            Some(UsedChain::Data(_, segments)) => Ok(segments),
            Some(UsedChain::Ack(_)) => Err(String::from("H2G buffer without data")),
            None => Err(String::from("no H2G buffer from the host")),
        }
    }

    /// Sends a guest function's result; the host reads it after the halt.
    pub fn send_result(&mut self, cid: u32, result: FunctionCallResult) -> Result<(), Error> {
        self.g2h.reclaim().map_err(|e| verr("G2H reclaim", e))?;
        {
            let mut builder = FlatBufferBuilder::new();
            let mut externals = ExternalValues::new();
            let control = result
                .encode(&mut builder, &mut externals)
                .map_err(|e| format!("cannot encode the result: {e:?}"))?;
            let msg = EncodedMessage::new(MsgKind::Response, cid, control, externals)
                .ok_or_else(|| String::from("result too long"))?;
            let chain = self
                .chain_for(&msg, None)
                .map_err(|e| verr("G2H result", e))?;
            let mut batch = self.g2h.batch();
            batch.submit(chain).map_err(|e| verr("G2H submit", e))?;
            batch.finish_without_notify();
        }
        drop(result);
        self.prefill_h2g()
    }

    /// Calls a host function and waits for its answer.
    pub fn call_host(
        &mut self,
        name: &str,
        params: Option<Vec<ParameterValue>>,
        ret: ReturnType,
    ) -> Result<ReturnValue, Error> {
        let call = FunctionCall::new(name.into(), params, FunctionCallType::Host, ret);
        let mut builder = FlatBufferBuilder::new();
        let mut externals = ExternalValues::new();
        let control = call
            .encode(&mut builder, &mut externals)
            .map_err(|e| format!("cannot encode the host call: {e:?}"))?;
        let cid = self.next_cid;
        self.next_cid = self.next_cid.checked_add(1).unwrap_or(1);
        let msg = EncodedMessage::new(MsgKind::Request, cid, control, externals)
            .ok_or_else(|| String::from("host call too long"))?;
        let reply_room = match ret {
            ReturnType::String | ReturnType::VecBytes | ReturnType::ByteChunks => None,
            _ => Some(G2H_LOWER_SLOT_SIZE),
        };
        let token = match self.send_request(&msg, reply_room) {
            Ok(t) => t,
            Err(e) if e.is_transient() => {
                // Full: let the host drain the queue, then try once more.
                self.g2h.notify_backpressure();
                self.g2h.reclaim().map_err(|e| verr("G2H reclaim", e))?;
                let room = self.g2h.preferred_segment_len();
                self.send_request(&msg, reply_room).map_err(|e| {
                    if msg.total_len() > room {
                        format!(
                            "the call carries {} bytes, more than a guest-to-host buffer holds ({room} bytes, the sandbox's output size)",
                            msg.total_len()
                        )
                    } else {
                        verr("G2H host call", e)
                    }
                })?
            }
            Err(e) => return Err(verr("G2H host call", e)),
        };
        let reply = loop {
            match self.g2h.poll().map_err(|e| verr("G2H poll", e))? {
                Some(r) if r.token() == token => break r,
                Some(UsedChain::Data(..)) => {
                    return Err(String::from("G2H reply for another request"));
                }
                Some(UsedChain::Ack(_)) => {}
                None => return Err(String::from("the host did not answer the call")),
            }
        };
        let UsedChain::Data(_, mut segments) = reply else {
            return Err(String::from("the host's answer carries no data"));
        };
        let header = segments
            .split_to(MsgHeader::SIZE)
            .ok_or_else(|| String::from("answer without header"))?
            .into_bytes();
        let header = MsgHeader::from_bytes(&header)
            .ok_or_else(|| String::from("answer with a bad header"))?;
        if header.kind != MsgKind::Response
            || header.cid != cid
            || header.payload_len as usize != segments.len()
        {
            return Err(String::from("answer with bad framing"));
        }
        let (control, mut externals) = split_control(segments)?;
        let result = FunctionCallResult::decode(&control, &mut externals)
            .map_err(|e| format!("cannot decode the answer: {e:?}"))?;
        result
            .into_inner()
            .map_err(|e| format!("host function failed: {}", e.message))
    }

    fn send_request(
        &mut self,
        msg: &EncodedMessage<'_>,
        reply_room: Option<usize>,
    ) -> Result<hyperlight_common::virtq::Token, VirtqError> {
        let chain = self.chain_for(msg, Some(reply_room))?;
        self.g2h.submit(chain)
    }

    /// One G2H chain holding `msg`: readable regions (the external values get
    /// their own when they fill whole slots), then room for an answer when
    /// `reply` is given (`Some(None)`: all the room there is).
    fn chain_for(
        &self,
        msg: &EncodedMessage<'_>,
        reply: Option<Option<usize>>,
    ) -> Result<hyperlight_common::virtq::SendChain<ArenaMem>, VirtqError> {
        let seg = self.g2h.preferred_segment_len();
        let ext = msg.external_len();
        let mut b = self.g2h.chain();
        if ext != 0 && ext.is_multiple_of(seg) {
            b = b.readable(msg.prefix_len()).readable(ext);
        } else {
            b = b.readable(msg.total_len());
        }
        b = match reply {
            None => b,
            Some(Some(n)) => b.writable(n),
            Some(None) => b.writable(seg).writable_avail(),
        };
        let mut chain = b.build()?;
        for chunk in msg.chunks() {
            chain.write_all(chunk)?;
        }
        Ok(chain)
    }

    /// Posts a writable buffer for every free H2G slot.
    fn prefill_h2g(&mut self) -> Result<(), Error> {
        let slot = self.h2g_slot;
        let mut batch = self.h2g.batch();
        loop {
            let chain = match batch.chain().writable(slot).build() {
                Ok(c) => c,
                Err(e) if e.is_transient() => break,
                Err(e) => return Err(verr("H2G prefill", e)),
            };
            match batch.submit(chain) {
                Ok(_) => {}
                Err(e) if e.is_transient() => break,
                Err(e) => return Err(verr("H2G prefill", e)),
            }
        }
        batch.finish_without_notify();
        Ok(())
    }

    /// Resets both queues to their canonical state for a snapshot and tells
    /// the host through the mailbox.
    pub fn checkpoint(&mut self) -> Result<(), Error> {
        let mbx = self.mailbox as *mut u64;
        // SAFETY: the mailbox is an aligned u64 in the arena.
        unsafe { mbx.write_volatile(MailboxValue::CheckpointPending.raw()) };
        self.g2h.reclaim().map_err(|e| verr("G2H reclaim", e))?;
        // SAFETY: the host's consumers are stopped during a checkpoint and
        // no chain of ours is outstanding.
        unsafe {
            self.g2h.reset().map_err(|e| verr("G2H reset", e))?;
            self.h2g.reset().map_err(|e| verr("H2G reset", e))?;
        }
        self.prefill_h2g()?;
        crate::usermode::checkpointed();
        // SAFETY: as above.
        unsafe { mbx.write_volatile(MailboxValue::CheckpointComplete.raw()) };
        Ok(())
    }
}

/// Splits a message payload into its size-prefixed flatbuffer and the
/// external values that follow it.
fn split_control(mut payload: Segments) -> Result<(Bytes, Segments), Error> {
    let mut prefix = [0u8; SIZE_PREFIX_LEN];
    payload
        .as_buf()
        .try_copy_to_slice(&mut prefix)
        .map_err(|_| String::from("message without size prefix"))?;
    let len = size_prefix_payload_len(&prefix)
        .and_then(size_prefixed_len)
        .ok_or_else(|| String::from("message with a bad size prefix"))?;
    let control = payload
        .split_to(len)
        .ok_or_else(|| String::from("message control data truncated"))?
        .into_bytes();
    Ok((control, payload))
}
