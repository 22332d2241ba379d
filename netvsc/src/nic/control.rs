//! RNDIS control messages (devices §2.10, §2.12) on the primary channel, and closing.

use super::*;

/// Room for a QUERY or SET: the 28-byte header and the largest information buffer sent (a
/// 156-byte NDIS_OFFLOAD header-only query).
const OID_REQUEST_BYTES: usize = 28 + 160;

impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Nic<'b, T, H, N, M> {
    pub(super) fn next_id(&mut self) -> u32 {
        let id = self.core.next_request_id;
        self.core.next_request_id = id.wrapping_add(1).max(1);
        id
    }

    /// Puts an RNDIS control message into a send section and sends it (channel type
    /// control, completion requested); the NVSP completion frees the section.
    fn send_control(&mut self, message: &[u8]) -> Result<(), NetError> {
        let section = self
            .core
            .sections
            .alloc()
            .ok_or(NetError::Busy(Busy::NoSection))?;
        let size = self.core.info.section_size as usize;
        let Some(sb) = self.send_buf.as_ref() else {
            self.core.sections.release(section);
            return Err(NetError::InvalidArgument("no send buffer"));
        };
        if message.len() > size || sb.write_at(usize::from(section) * size, message).is_err() {
            self.core.sections.release(section);
            return Err(NetError::InvalidArgument(
                "control message larger than a section",
            ));
        }
        let m = NvspRndisPacket {
            msg_type: msg::SEND_RNDIS_PKT.into(),
            channel_type: CHANNEL_TYPE_CONTROL.into(),
            send_buf_section_index: u32::from(section).into(),
            send_buf_section_size: (message.len() as u32).into(),
        };
        if let Err(e) = self
            .channel
            .request(&[&padded(m.as_bytes())], Ctx::Control { section })
        {
            self.core.sections.release(section);
            return Err(e.into());
        }
        Ok(())
    }

    /// Sends an RNDIS control message through a send section and waits for its RNDIS reply
    /// in the receive path (the NVSP completion frees the section whenever it comes).
    pub(super) fn rndis_request(
        &mut self,
        id: u32,
        message: &[u8],
        waiter: &mut impl Wait,
    ) -> Result<Reply, NetError> {
        waiter.restart();
        self.send_control(message)?;
        self.core.awaiting = Some(id);
        self.core.reply = None;
        self.core.control_refused = None;
        // Nobody takes frames while the reply is awaited: they are dropped and counted as
        // not taken (`rx_not_ready`), never counted as delivered.
        let ready = core::mem::replace(&mut self.core.ready, false);
        let result = loop {
            if let Err(e) = self.pump(64, &mut |_, _| true) {
                break Err(e);
            }
            if let Some(r) = self.core.reply.take() {
                break Ok(r);
            }
            if let Some(status) = self.core.control_refused.take() {
                break Err(NetError::HostStatus {
                    what: "RNDIS control message",
                    status,
                });
            }
            self.channel.bus().poll();
            if let Err(e) = waiter.wait() {
                break Err(e.into());
            }
        };
        self.core.awaiting = None;
        self.core.ready = ready;
        result
    }

    pub(super) fn query(&mut self, oid: u32, waiter: &mut impl Wait) -> Result<Reply, NetError> {
        self.query_with(oid, &[], waiter)
    }

    /// QUERY `oid` with `input` as the information buffer (an NDIS object header naming the
    /// revision the guest understands, for the offload OIDs).
    pub(super) fn query_with(
        &mut self,
        oid: u32,
        input: &[u8],
        waiter: &mut impl Wait,
    ) -> Result<Reply, NetError> {
        let id = self.next_id();
        let mut m = [0u8; OID_REQUEST_BYTES];
        let len = rndis::write_oid_request(&mut m, rndis_msg::QUERY, id, oid, input)
            .ok_or(NetError::InvalidArgument("query"))?;
        let r = self.rndis_request(id, &m[..len], waiter)?;
        if r.msg_type != rndis_msg::QUERY_CMPLT {
            return Err(NetError::HostValue("QUERY answered with another type"));
        }
        if r.status != rndis_status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "RNDIS QUERY",
                status: r.status,
            });
        }
        Ok(r)
    }

    pub(super) fn query_u32(
        &mut self,
        oid: u32,
        waiter: &mut impl Wait,
    ) -> Result<(u32, Reply), NetError> {
        let r = self.query(oid, waiter)?;
        if r.info_len < 4 {
            return Err(NetError::HostValue("QUERY reply shorter than a u32"));
        }
        Ok((
            u32::from_le_bytes([r.info[0], r.info[1], r.info[2], r.info[3]]),
            r,
        ))
    }

    pub(super) fn set_u32(
        &mut self,
        oid: u32,
        value: u32,
        waiter: &mut impl Wait,
    ) -> Result<(), NetError> {
        self.set(oid, &value.to_le_bytes(), waiter)
    }

    /// SET `oid` to `value` and waits for a successful SET completion.
    pub(super) fn set(
        &mut self,
        oid: u32,
        value: &[u8],
        waiter: &mut impl Wait,
    ) -> Result<(), NetError> {
        let id = self.next_id();
        let mut m = [0u8; OID_REQUEST_BYTES];
        let len = rndis::write_oid_request(&mut m, rndis_msg::SET, id, oid, value)
            .ok_or(NetError::InvalidArgument("set"))?;
        let r = self.rndis_request(id, &m[..len], waiter)?;
        if r.msg_type != rndis_msg::SET_CMPLT {
            return Err(NetError::HostValue("SET answered with another type"));
        }
        if r.status != rndis_status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "RNDIS SET",
                status: r.status,
            });
        }
        Ok(())
    }

    /// RNDIS KEEPALIVE (devices §2.10): asks the host's RNDIS side whether it is alive and
    /// waits for the KEEPALIVE completion. Frames that arrive during the wait are dropped
    /// (counted in [`NicStats::rx_not_ready`]). Thread context only.
    pub fn keepalive(&mut self, waiter: &mut impl Wait) -> Result<(), NetError> {
        let id = self.next_id();
        let m = RndisKeepalive {
            header: RndisHeader {
                msg_type: rndis_msg::KEEPALIVE.into(),
                msg_len: (size_of::<RndisKeepalive>() as u32).into(),
            },
            request_id: id.into(),
        };
        let r = self.rndis_request(id, m.as_bytes(), waiter)?;
        if r.msg_type != rndis_msg::KEEPALIVE_CMPLT {
            return Err(NetError::HostValue("KEEPALIVE answered with another type"));
        }
        if r.status != rndis_status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "RNDIS KEEPALIVE",
                status: r.status,
            });
        }
        Ok(())
    }

    /// RNDIS HALT (devices §2.10, §2.18): no reply comes; waits (bounded) until the host
    /// completed it and every other request in flight, so the send buffer is idle before it
    /// is revoked.
    fn halt(&mut self, waiter: &mut impl Wait) -> Result<(), NetError> {
        let id = self.next_id();
        let m = RndisKeepalive {
            header: RndisHeader {
                msg_type: rndis_msg::HALT.into(),
                msg_len: (size_of::<RndisKeepalive>() as u32).into(),
            },
            request_id: id.into(),
        };
        waiter.restart();
        self.send_control(m.as_bytes())?;
        while self.channel.requests_in_flight() > 0 {
            self.pump(64, &mut |_, _| true)?;
            if self.channel.requests_in_flight() == 0 {
                break;
            }
            self.channel.bus().poll();
            waiter.wait()?;
        }
        Ok(())
    }

    /// Closes the NIC (devices §2.18): packet filter 0, RNDIS HALT, REVOKE_RECV_BUF and REVOKE_SEND_BUF,
    /// both buffer GPADLs torn down, then the channel closed. The buffers are freed only when the bus
    /// confirms the host let go of them; any `Leaked` part makes the result `Leaked`. Thread
    /// context only.
    pub fn close(mut self, waiter: &mut impl Wait) -> Released {
        if self.mq.subs > 0 {
            log::warn!("netvsc: closing with sub-queues open (close them first: Nic::close_all)");
        }
        waiter.restart();
        self.flush_quietly();
        let alive = self.channel.is_alive() && self.core.ready;
        self.teardown(waiter, alive)
    }

    pub(super) fn teardown(mut self, waiter: &mut impl Wait, graceful: bool) -> Released {
        // Frames that arrive while the close waits for its SET reply are counted as
        // "not ready", not handed to nobody.
        self.core.ready = false;
        if graceful
            && self
                .set_u32(oid::GEN_CURRENT_PACKET_FILTER, 0, waiter)
                .is_err()
        {
            log::warn!(
                "netvsc {}: packet filter 0 not confirmed",
                self.channel.relid()
            );
        }
        if graceful && let Err(e) = self.halt(waiter) {
            log::warn!("netvsc {}: HALT not completed: {e}", self.channel.relid());
        }
        for (present, revoke, id) in [
            (
                self.recv_buf.is_some(),
                msg::REVOKE_RECV_BUF,
                RECV_BUFFER_ID,
            ),
            (
                self.send_buf.is_some(),
                msg::REVOKE_SEND_BUF,
                SEND_BUFFER_ID,
            ),
        ] {
            if present && self.channel.is_alive() {
                let m = NvspRevokeBuffer {
                    msg_type: revoke.into(),
                    id: id.into(),
                    padding: 0.into(),
                };
                if let Err(e) = self.channel.send(&[&padded(m.as_bytes())]) {
                    log::warn!("netvsc: buffer revoke not sent: {e}");
                }
            }
        }
        let Self {
            channel,
            recv_buf,
            send_buf,
            large_buf,
            lso_buf,
            ..
        } = self;
        // The GPADL buffers first (devices §2.18, vmbus-core §10.1): closing the channel
        // releases a rescinded relid, after which the host no longer knows the channel's
        // GPADLs. The page-buffer and LSO slots have no GPADL, only GPA-direct requests name
        // them: they go after the channel, whose confirmed close ends any request the host
        // never completed.
        let mut released = Released::Freed;
        for b in [recv_buf, send_buf].into_iter().flatten() {
            waiter.restart();
            if b.release(waiter) == Released::Leaked {
                released = Released::Leaked;
            }
        }
        waiter.restart();
        if channel.close(waiter) == Released::Leaked {
            released = Released::Leaked;
        }
        for b in [large_buf, lso_buf].into_iter().flatten() {
            waiter.restart();
            if b.release(waiter) == Released::Leaked {
                released = Released::Leaked;
            }
        }
        released
    }
}
