//! Demo part two: the VMBus connection and the offer table.

use std::io;

use vmbus_guest::{Hal, OfferInfo, Transport, Vmbus};

use super::narrator::Narrator;
use crate::vmbus::MockVmbusHost;

/// Whether a mock-hypervisor log line is the refusal of a post to message connection 4
/// (INVALID_CONNECTION_ID): how a pre-5.0 host tells the guest to try an older version.
pub fn is_connection_4_refusal(line: &str) -> bool {
    line.contains("status 0x12") && line.contains("connection 0x4")
}

/// Connects to the host's channel manager (version fallback, offers) and narrates the result;
/// returns whether it worked.
pub fn connect<T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    guest: &Vmbus<T, H>,
) -> io::Result<bool> {
    n.section("VMBus: version negotiation and offers")?;
    n.say(&format!(
        "host release {} (speaks VMBus up to {})",
        host.release().name(),
        host.release().max_version()
    ))?;
    let mut waiter = vmbus_guest::BoundedWait::new(500, || {
        host.step();
    });
    let connected = guest.connect(&mut waiter);
    let negotiated = match (connected, guest.negotiated()) {
        (Ok(_), Some(negotiated)) => negotiated,
        (Err(e), _) => return n.record("VMBus connect", Err(e.to_string())),
        (Ok(_), None) => return n.record("VMBus connect", Err("no version agreed".into())),
    };
    let refusals = host
        .hypervisor()
        .protocol_errors()
        .iter()
        .filter(|e| is_connection_4_refusal(e))
        .count();
    if refusals > 0 {
        n.say(&format!(
            "connection 4 refused {refusals} times (INVALID_CONNECTION_ID): a pre-5.0 host, so \
             the guest fell back to connection 1"
        ))?;
    }
    n.say(&format!(
        "tried 6.0 and down; agreed on {} - messages now go to connection {:#x}{}",
        negotiated.version,
        negotiated.message_connection_id,
        if negotiated.features.is_empty() {
            String::new()
        } else {
            format!(", 6.0 features {:#x}", negotiated.features.bits())
        }
    ))?;
    n.record(
        "VMBus connect",
        Ok(format!("version {}", negotiated.version)),
    )?;
    n.say("")?;
    n.say("relid  class         instance                               conn id   monitor")?;
    let offers: Vec<OfferInfo> = guest.with_offers(|t| t.iter().copied().collect());
    let count = offers.len();
    for offer in &offers {
        n.say(&format!(
            "{:>5}  {:<12}  {}  {:#08x}  {}",
            offer.relid,
            offer.class.short_name(),
            offer.interface_instance,
            offer.connection_id,
            offer
                .monitor_id
                .map_or_else(|| "-".to_string(), |m| m.to_string())
        ))?;
    }
    n.record(
        "offer table",
        if count > 0 {
            Ok(format!(
                "{count} channels offered, ALLOFFERS_DELIVERED seen"
            ))
        } else {
            Err("the host offered nothing".into())
        },
    )
}
