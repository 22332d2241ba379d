//! Hypercall decoding and the implemented calls (protocol/vmbus-core.md §3).

use super::memory::{GuestMemory, PAGE_SIZE};
use super::presets::{feature, privilege};
use super::state::{Fault, HYPERCALL_STUB, State};
use super::types::{PostedMessage, TlbFlush};

/// HV_STATUS values the mock returns.
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Unknown call code.
    pub const INVALID_HYPERCALL_CODE: u16 = 0x0002;
    /// Bad control word (reserved bits, rep count/start, fast bit, variable header).
    pub const INVALID_HYPERCALL_INPUT: u16 = 0x0003;
    /// Parameter block misaligned, crossing a page, outside RAM or on an overlay page.
    pub const INVALID_ALIGNMENT: u16 = 0x0004;
    /// A parameter value is invalid.
    pub const INVALID_PARAMETER: u16 = 0x0005;
    /// The partition lacks the privilege for the call.
    pub const ACCESS_DENIED: u16 = 0x0006;
    /// Unknown connection id.
    pub const INVALID_CONNECTION_ID: u16 = 0x0012;
    /// The port has no free message buffer (transient).
    pub const INSUFFICIENT_BUFFERS: u16 = 0x0013;
}

use status::*;

/// HvCallFlushVirtualAddressSpace.
pub const FLUSH_VIRTUAL_ADDRESS_SPACE: u16 = 0x0002;
/// HvCallFlushVirtualAddressList.
pub const FLUSH_VIRTUAL_ADDRESS_LIST: u16 = 0x0003;
/// HvCallNotifyLongSpinWait.
pub const NOTIFY_LONG_SPIN_WAIT: u16 = 0x0008;
/// HvCallSendSyntheticClusterIpi.
pub const SEND_SYNTHETIC_CLUSTER_IPI: u16 = 0x000B;
/// HvCallPostMessage.
pub const POST_MESSAGE: u16 = 0x005C;
/// HvCallSignalEvent.
pub const SIGNAL_EVENT: u16 = 0x005D;

/// Shape of a supported call.
struct CallSpec {
    rep: bool,
    /// Fixed input header bytes.
    header: usize,
    /// Bytes per rep input element.
    element: usize,
    privilege: u64,
}

fn spec(code: u16) -> Option<CallSpec> {
    let (rep, header, element, privilege) = match code {
        FLUSH_VIRTUAL_ADDRESS_SPACE => (false, 24, 0, 0),
        FLUSH_VIRTUAL_ADDRESS_LIST => (true, 24, 8, 0),
        NOTIFY_LONG_SPIN_WAIT => (false, 8, 0, 0),
        SEND_SYNTHETIC_CLUSTER_IPI => (false, 16, 0, 0),
        POST_MESSAGE => (false, 256, 0, privilege::POST_MESSAGES),
        SIGNAL_EVENT => (false, 8, 0, privilege::SIGNAL_EVENTS),
        _ => return None,
    };
    Some(CallSpec {
        rep,
        header,
        element,
        privilege,
    })
}

/// How the parameters were passed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Params {
    /// Memory-based: the input GPA. (No implemented call has output parameters, so the output
    /// GPA is ignored, as the TLFS allows for calls without output.)
    Slow { input: u64 },
    /// Register-based: two input qwords.
    Fast { input0: u64, input1: u64 },
}

/// A rejected call: status and why.
type Reject = (u16, String);

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl State {
    /// Executes a hypercall and returns the raw result value.
    pub(crate) fn hypercall(
        &mut self,
        mem: &GuestMemory,
        control: u64,
        params: Params,
    ) -> Result<u64, Fault> {
        let Some(page) = self.hypercall_page.gpa() else {
            return Err(Fault::Ud("hypercall page not enabled".into()));
        };
        if !mem.holds(page, &HYPERCALL_STUB) {
            // The page is read+execute only on Hyper-V; the guest's write would have faulted.
            return Err(Fault::Gp(format!(
                "the hypercall page overlay at {page:#x} was written (writes fault on Hyper-V)"
            )));
        }
        let code = control as u16;
        let (status, reps) = match self.dispatch(mem, control, params) {
            Ok(reps) => (SUCCESS, reps),
            Err((status, reason)) => {
                self.error(format!(
                    "hypercall {code:#06x} (control {control:#x}) -> status {status:#x}: {reason}"
                ));
                (status, 0)
            }
        };
        self.hypercall_log.push((code, status));
        Ok(u64::from(status) | (u64::from(reps) << 32))
    }

    fn dispatch(&mut self, mem: &GuestMemory, control: u64, params: Params) -> Result<u16, Reject> {
        let code = control as u16;
        let fast = control & (1 << 16) != 0;
        let varhead = (control >> 17) & 0x3FF;
        let rep_count = ((control >> 32) & 0xFFF) as u16;
        let rep_start = ((control >> 48) & 0xFFF) as u16;
        const RESERVED: u64 = (0xF << 27) | (0xF << 44) | (0xF << 60);
        let bad = |m: &str| Err((INVALID_HYPERCALL_INPUT, m.to_string()));
        if control & RESERVED != 0 {
            return bad("reserved control bits set");
        }
        if control & (1 << 31) != 0 {
            return bad("nested bit set in a non-nested partition");
        }
        let Some(spec) = spec(code) else {
            return Err((INVALID_HYPERCALL_CODE, "unknown call code".into()));
        };
        if !self.has_privilege(spec.privilege) {
            return Err((
                ACCESS_DENIED,
                format!("needs privilege {:#x}", spec.privilege),
            ));
        }
        match params {
            Params::Slow { .. } if fast => return bad("fast bit set on a memory-based call"),
            Params::Fast { .. } if !fast => return bad("fast bit clear on a register call"),
            _ => {}
        }
        if varhead != 0 {
            return bad("variable header size for a call without one");
        }
        if spec.rep {
            if rep_count == 0 {
                return bad("rep count 0 for a rep call");
            }
            if rep_start >= rep_count {
                return bad("rep start index not below rep count");
            }
        } else if rep_count != 0 || rep_start != 0 {
            return bad("rep count/start for a simple call");
        }
        let size = spec.header + spec.element * usize::from(rep_count);
        // Register input needs no allocation (a signal is one such call per burst).
        let mut registers = [0u8; 16];
        let from_memory;
        let input: &[u8] = match params {
            Params::Fast { input0, input1 } => {
                if size > 16 {
                    return bad(
                        "input larger than 16 bytes passed in registers (XMM fast input is not modelled)",
                    );
                }
                registers[..8].copy_from_slice(&input0.to_le_bytes());
                registers[8..].copy_from_slice(&input1.to_le_bytes());
                &registers
            }
            Params::Slow { input, .. } => {
                from_memory = self.read_input(mem, input, size)?;
                &from_memory
            }
        };
        match code {
            FLUSH_VIRTUAL_ADDRESS_SPACE | FLUSH_VIRTUAL_ADDRESS_LIST => {
                self.flush(code, input, rep_start, rep_count)
            }
            NOTIFY_LONG_SPIN_WAIT => Ok(0),
            SEND_SYNTHETIC_CLUSTER_IPI => self.cluster_ipi(input),
            POST_MESSAGE => self.post_message(input),
            SIGNAL_EVENT => self.signal_event(input),
            _ => unreachable!("spec() covers the codes"),
        }
    }

    /// Validates an input block's GPA and reads it.
    fn read_input(&self, mem: &GuestMemory, gpa: u64, size: usize) -> Result<Vec<u8>, Reject> {
        let align = |m: String| Err((INVALID_ALIGNMENT, m));
        if !gpa.is_multiple_of(8) {
            return align(format!("input GPA {gpa:#x} not 8-byte aligned"));
        }
        if (gpa % PAGE_SIZE as u64) + size as u64 > PAGE_SIZE as u64 {
            return align(format!("input block {gpa:#x}+{size} crosses a page"));
        }
        let page = gpa & !(PAGE_SIZE as u64 - 1);
        if self.overlay_pages().contains(&page) {
            return align(format!("input GPA {gpa:#x} on an overlay page"));
        }
        match mem.read(gpa, size) {
            Some(b) => Ok(b),
            None => align(format!("input GPA {gpa:#x} outside guest RAM")),
        }
    }

    fn flush(&mut self, code: u16, input: &[u8], start: u16, count: u16) -> Result<u16, Reject> {
        const KNOWN: u64 = 0b1111; // all processors, all spaces, non-global only, extended range
        const EXTENDED_RANGE: u64 = 1 << 3;
        let flags = u64_at(input, 8);
        if flags & !KNOWN != 0 {
            return Err((INVALID_PARAMETER, format!("unknown flush flags {flags:#x}")));
        }
        if flags & EXTENDED_RANGE != 0
            && !(self.has_privilege(privilege::EXTENDED_GVA_RANGES_FOR_FLUSH)
                || self.has_feature(feature::EXTENDED_GVA_RANGES_FOR_FLUSH))
        {
            return Err((
                INVALID_PARAMETER,
                "extended GVA range format not available".into(),
            ));
        }
        // A rep call may return early with fewer reps done (TLFS: the ~50 µs budget); the guest
        // continues from the reps completed.
        let end = match self.max_reps_per_call {
            Some(limit) if code == FLUSH_VIRTUAL_ADDRESS_LIST => count.min(start + limit.max(1)),
            _ => count,
        };
        let gva_list = (usize::from(start)..usize::from(end))
            .map(|i| u64_at(input, 24 + 8 * i))
            .collect();
        self.tlb_flushes.push(TlbFlush {
            call_code: code,
            address_space: u64_at(input, 0),
            flags,
            processor_mask: u64_at(input, 16),
            gva_list,
        });
        Ok(end)
    }

    fn cluster_ipi(&mut self, input: &[u8]) -> Result<u16, Reject> {
        let vector = u32_at(input, 0);
        let vtl = input[4];
        let mask = u64_at(input, 8);
        if !(0x10..=0xFF).contains(&vector) {
            return Err((INVALID_PARAMETER, format!("IPI vector {vector:#x}")));
        }
        if vtl != 0 {
            return Err((INVALID_PARAMETER, format!("IPI target VTL {vtl}")));
        }
        if input[5..8] != [0, 0, 0] {
            return Err((INVALID_PARAMETER, "IPI reserved bytes non-zero".into()));
        }
        self.ipis.push((vector as u8, mask));
        for (i, vp) in self.vps.iter_mut().enumerate().take(64) {
            if mask & (1 << i) != 0 {
                vp.interrupts.push(vector as u8);
            }
        }
        Ok(0)
    }

    fn post_message(&mut self, input: &[u8]) -> Result<u16, Reject> {
        let connection_id = u32_at(input, 0);
        let reserved = u32_at(input, 4);
        let message_type = u32_at(input, 8);
        let size = u32_at(input, 12);
        let invalid = |m: String| Err((INVALID_PARAMETER, m));
        if connection_id >> 24 != 0 {
            return invalid(format!("connection id {connection_id:#x} bits 31:24 set"));
        }
        if reserved != 0 {
            return invalid("PostMessage reserved field non-zero".into());
        }
        if message_type == 0 || message_type & (1 << 31) != 0 {
            return invalid(format!("message type {message_type:#x}"));
        }
        if size > 240 {
            return invalid(format!("payload size {size} > 240"));
        }
        let Some(port) = self.message_ports.get_mut(&connection_id) else {
            return Err((
                INVALID_CONNECTION_ID,
                format!("no message port for connection {connection_id:#x}"),
            ));
        };
        if self.fail_posts.0 > 0 {
            self.fail_posts.0 -= 1;
            return Err((self.fail_posts.1, "injected PostMessage failure".into()));
        }
        if port.queued >= port.capacity {
            return Err((
                INSUFFICIENT_BUFFERS,
                format!("port {connection_id:#x} full ({} messages)", port.capacity),
            ));
        }
        port.queued += 1;
        self.posted.push(PostedMessage {
            connection_id,
            message_type,
            payload: input[16..16 + size as usize].to_vec(),
        });
        Ok(0)
    }

    fn signal_event(&mut self, input: &[u8]) -> Result<u16, Reject> {
        let connection_id = u32_at(input, 0);
        let flag = u16::from_le_bytes([input[4], input[5]]);
        if input[6..8] != [0, 0] {
            return Err((
                INVALID_PARAMETER,
                "SignalEvent reserved field non-zero".into(),
            ));
        }
        if !self.event_ports.contains(&connection_id) {
            return Err((
                INVALID_CONNECTION_ID,
                format!("no event port for connection {connection_id:#x}"),
            ));
        }
        self.signaled.push((connection_id, flag));
        Ok(0)
    }
}
