//! How a channel wakes the host (vmbus-core §8): the pending bit of its monitor id in the
//! child→parent monitor page (MNF) when the offer has one, else HvSignalEvent on the offer's
//! connection id — below 2.4, after setting the relid's bit in the legacy interrupt page.
//! Fixed at open, so signalling needs neither the bus lock nor the offer table.

#![forbid(unsafe_code)]

use crate::bus::LEGACY_SEND_HALF;
use crate::error::VmbusError;
use crate::hal::HV_PAGE_SIZE;
use crate::offers::OfferInfo;
use crate::protocol::{MAX_CHANNELS, MonitorPage, VmbusVersion};
use crate::shared::{SharedPages, SharedWord};
use crate::transport::Transport;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Signaller {
    /// Set the monitor pending bit; the hypervisor delivers it (no hypercall).
    Monitor(SharedWord),
    /// HvSignalEvent, after setting the legacy interrupt-page bit below 2.4.
    Event {
        connection_id: u32,
        legacy: Option<SharedWord>,
    },
}

impl Signaller {
    /// The signalling of `info` on a connection of `version` whose shared pages (two monitor
    /// pages, then the legacy interrupt page) are `pages`.
    pub(crate) fn for_offer(
        info: &OfferInfo,
        version: VmbusVersion,
        pages: Option<&SharedPages>,
    ) -> Self {
        if let (Some(id), Some(pages)) = (info.monitor_id, pages)
            && let Some((offset, bit)) = MonitorPage::pending_bit(id)
            && let Some(word) = pages.word(HV_PAGE_SIZE + offset, bit)
        {
            return Self::Monitor(word);
        }
        let legacy = if !info.dedicated_interrupt
            && version < VmbusVersion::V2_4
            && info.relid < MAX_CHANNELS
        {
            pages.and_then(|p| {
                p.word(
                    2 * HV_PAGE_SIZE + LEGACY_SEND_HALF + info.relid as usize / 32 * 4,
                    1 << (info.relid % 32),
                )
            })
        } else {
            None
        };
        Self::Event {
            connection_id: info.connection_id,
            legacy,
        }
    }

    /// Wakes the host.
    pub(crate) fn signal(&self, transport: &impl Transport) -> Result<(), VmbusError> {
        match self {
            Self::Monitor(word) => {
                word.set();
                Ok(())
            }
            Self::Event {
                connection_id,
                legacy,
            } => {
                if let Some(w) = legacy {
                    w.set();
                }
                transport
                    .signal_event(*connection_id)
                    .map_err(VmbusError::Signal)
            }
        }
    }
}
