//! The host side of SEND_RNDIS_PKT (devices §2.9, §2.10): reading the RNDIS bytes from a
//! send section or page buffers, checking them as real hosts do, and answering control
//! messages through the receive buffer.

use super::*;

impl State {
    /// Reads the RNDIS bytes of a SEND_RNDIS_PKT (section or GPA ranges) and handles each
    /// message; completes the NVSP packet.
    pub(super) fn on_rndis(&mut self, ch: &mut HostChannel, p: &HostPacket, index: u16) {
        if !p.completion_requested() {
            self.reject(
                ch,
                "MissingTransactionId: SEND_RNDIS_PKT without completion requested".into(),
            );
            return;
        }
        let channel_type = u32_at(&p.payload, 4).unwrap_or(u32::MAX);
        if channel_type == 1 && self.refuse_control {
            let m = self.padded(&[108, 2]);
            self.complete(ch, p.transaction_id, &m);
            return;
        }
        let section = u32_at(&p.payload, 8).unwrap_or(u32::MAX);
        let size = u32_at(&p.payload, 12).unwrap_or(0);
        if self.revoked && section != 0xFFFF_FFFF {
            let m = self.padded(&[108, 2]);
            self.complete(ch, p.transaction_id, &m);
            return;
        }
        let (buf, first_range, total) = if section != 0xFFFF_FFFF {
            let Some(sb) = self.send.as_ref() else {
                self.die(
                    ch,
                    "InvalidPacketData: section index without a send buffer".into(),
                );
                return;
            };
            let section_size = self.config.section_size.max(1);
            if section >= sb.sections || !(8..=section_size).contains(&size) {
                self.die(
                    ch,
                    format!("InvalidPacketData: section {section} size {size}"),
                );
                return;
            }
            // Reused, and not zeroed: every byte looked at is read from the section first.
            let mut b = std::mem::take(&mut self.sent_bytes);
            let n = size as usize;
            if b.len() < n {
                b.resize(n, 0);
            }
            if let Err(e) = ch.read_gpadl(
                sb.gpadl,
                u64::from(section) * u64::from(section_size),
                &mut b[..n],
            ) {
                self.die(ch, format!("send section unreadable: {e}"));
                return;
            }
            (b, n, n)
        } else {
            if p.packet_type != PACKET_TYPE_GPA_DIRECT || p.gpa_ranges.is_empty() {
                self.die(
                    ch,
                    "InvalidPacketData: no section and no page buffers".into(),
                );
                return;
            }
            // Page buffers (devices §0.5, §2.9): single-page ranges, at most 32.
            if p.gpa_ranges.len() > 32
                || p.gpa_ranges
                    .iter()
                    .any(|(count, offset, pfns)| pfns.len() != 1 || offset + count > 4096)
            {
                self.reject(
                    ch,
                    "PageBuffer: a range crosses a page boundary or more than 32 ranges".into(),
                );
                let m = self.padded(&[108, 2]);
                self.complete(ch, p.transaction_id, &m);
                return;
            }
            let mut b = std::mem::take(&mut self.sent_bytes);
            b.clear();
            let mut first = 0;
            for (i, (count, offset, pfns)) in p.gpa_ranges.iter().enumerate() {
                let mut part = vec![0u8; *count as usize];
                let mut done = 0usize;
                let mut page_off = *offset as usize;
                for pfn in pfns {
                    let n = (4096 - page_off).min(part.len() - done);
                    if ch
                        .read_gpa(pfn * 4096 + page_off as u64, &mut part[done..done + n])
                        .is_err()
                    {
                        self.die(ch, "page buffer outside guest RAM".into());
                        return;
                    }
                    done += n;
                    page_off = 0;
                }
                if i == 0 {
                    first = part.len();
                }
                b.extend_from_slice(&part);
            }
            let n = b.len();
            (b, first, n)
        };
        let bytes = &buf[..total];
        let mut data_messages = 0u64;
        let mut ok = true;
        let mut at = 0usize;
        let mut messages = 0u32;
        let align = 1usize << self.config.packet_alignment_factor.min(12);
        if channel_type == 0 {
            self.data_packets_from_guest += 1;
        }
        while at + 8 <= bytes.len() {
            messages += 1;
            // Packed messages (devices §2.9): at most max_packets_per_message, each starting
            // at the alignment INITIALIZE_COMPLETE announced.
            if messages > self.config.max_packets_per_message.max(1) || !at.is_multiple_of(align) {
                self.reject(
                    ch,
                    format!("RNDIS message {messages} of a section at offset {at}: beyond the announced packing"),
                );
                ok = false;
                break;
            }
            let msg_type = u32_at(bytes, at).unwrap_or(0);
            let msg_len = u32_at(bytes, at + 4).unwrap_or(0) as usize;
            if msg_len < 8 || at + msg_len > bytes.len() {
                self.reject(ch, format!("RNDIS message length {msg_len} at {at}"));
                ok = false;
                break;
            }
            let m = &bytes[at..at + msg_len];
            if msg_type != 1 && (channel_type != 1 || index != 0) {
                if index != 0 {
                    self.reject(
                        ch,
                        "NotSupportedOnSubChannel: RNDIS control on a sub-channel".into(),
                    );
                } else {
                    self.reject(
                        ch,
                        format!("RNDIS control message {msg_type:#x} on the data channel type"),
                    );
                }
                ok = false;
            } else if msg_type == 1 {
                ok &= self.on_data(ch, m, at, first_range);
                self.note_sent(m, index);
                data_messages += 1;
            } else if !self.on_control(ch, m) {
                self.sent_bytes = buf;
                return;
            }
            if section == 0xFFFF_FFFF {
                break;
            }
            at += msg_len;
        }
        self.note_sent_count(index, data_messages);
        self.sent_bytes = buf;
        // SEND_RNDIS_PKT_COMPLETE {108, status}, padded to the NVSP message size (no
        // allocation per packet).
        let mut complete = [0u8; 40];
        complete[..4].copy_from_slice(&108u32.to_le_bytes());
        complete[4..8].copy_from_slice(&(if ok { 1u32 } else { 2 }).to_le_bytes());
        let payload = if self.empty_completions {
            &complete[..0]
        } else {
            &complete[..self.nvsp_size()]
        };
        if self.withhold {
            let st = if ok { 1 } else { 2 };
            self.withheld.push((st, p.transaction_id, index));
        } else {
            self.complete(ch, p.transaction_id, payload);
        }
    }

    pub(super) fn on_data(
        &mut self,
        ch: &mut HostChannel,
        m: &[u8],
        at: usize,
        first_range: usize,
    ) -> bool {
        let f = |o| u32_at(m, o).unwrap_or(0);
        if m.len() < 44 {
            self.reject(
                ch,
                "UnsupportedRndisBehavior: PACKET shorter than its header".into(),
            );
            return false;
        }
        let (data_off, data_len) = (f(8) as usize + 8, f(12) as usize);
        let (ppi_off, ppi_len) = (f(28) as usize + 8, f(32) as usize);
        if f(16) != 0 || f(20) != 0 || f(24) != 0 || f(36) != 0 {
            self.reject(ch, "UnsupportedRndisBehavior: OOB data or VC handle".into());
            return false;
        }
        if data_len == 0 || data_off + data_len > m.len() {
            self.reject(
                ch,
                format!("UnsupportedRndisBehavior: data {data_off}+{data_len}"),
            );
            return false;
        }
        let header_end = if ppi_len > 0 { ppi_off + ppi_len } else { 44 };
        if at + header_end > first_range {
            self.reject(
                ch,
                "HeaderSplit: RNDIS header or PPIs beyond the first range".into(),
            );
            return false;
        }
        let ppis = if ppi_len == 0 {
            Vec::new()
        } else {
            match m
                .get(ppi_off..ppi_off + ppi_len)
                .filter(|_| ppi_off >= 44)
                .and_then(offload::ppi_elements)
            {
                Some(p) => p,
                None => {
                    self.reject(
                        ch,
                        format!("UnsupportedRndisBehavior: PPI area {ppi_off}+{ppi_len}"),
                    );
                    return false;
                }
            }
        };
        let mut frame = std::borrow::Cow::Borrowed(&m[data_off..data_off + data_len]);
        let checksummed = self.offload.stats.tx_checksummed;
        let value_of = |kind: u32| {
            ppis.iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, p)| u32_at(p, 0).unwrap_or(0))
                .next_back()
                .unwrap_or(0)
        };
        let (csum, lso) = (value_of(0), value_of(2));
        if lso != 0 {
            // LSO v2: the host cuts the frame into segments (a checksum request beside it is
            // not what guests send).
            if csum & 0x1C != 0 {
                self.reject(ch, format!("checksum PPI {csum:#x} beside an LSO PPI"));
            }
            let max_frame = self.ndis_config.map_or(1514, |c| c.0) as usize;
            let nvsp = self.version.unwrap_or(0);
            match self.offload.transmit_lso(&frame, lso, max_frame, nvsp) {
                Ok((segments, notes)) => {
                    for n in notes {
                        self.reject(ch, n);
                    }
                    for s in segments {
                        self.offload.verify_sent(&s, true);
                        self.send_to_wire(&s);
                    }
                }
                Err(why) => {
                    self.reject(ch, why);
                    return false;
                }
            }
            return true;
        }
        // Checksum info: only a request (TCP, UDP or IP header bit) needs the host.
        if csum & 0x1C != 0 {
            match self.offload.transmit_checksum(frame.to_mut(), csum) {
                Ok(notes) => {
                    for n in notes {
                        self.reject(ch, n);
                    }
                }
                Err(why) => {
                    self.reject(ch, why);
                    return false;
                }
            }
        }
        let offloaded = self.offload.stats.tx_checksummed != checksummed;
        self.offload.verify_sent(&frame, offloaded);
        self.send_to_wire(&frame);
        true
    }

    /// A frame leaving the host: to the switch, counted, kept when asked.
    fn send_to_wire(&mut self, frame: &[u8]) {
        if let Some((sw, port)) = &self.switch {
            sw.forward(*port, frame);
        }
        self.frames_from_guest_count += 1;
        if self.keep_frames {
            self.frames_from_guest.push(frame.to_vec());
        }
    }

    /// Handles an RNDIS control message; false if it was fatal.
    pub(super) fn on_control(&mut self, ch: &mut HostChannel, m: &[u8]) -> bool {
        let msg_type = u32_at(m, 0).unwrap_or(0);
        let request_id = u32_at(m, 8).unwrap_or(0);
        match msg_type {
            2 => {
                if self.rndis_initialized {
                    self.die(ch, "InvalidRndisState: second INITIALIZE".into());
                    return false;
                }
                self.rndis_initialized = true;
                let reply = words(&[
                    0x8000_0002,
                    52,
                    request_id,
                    0,
                    1,
                    0,
                    1,
                    0,
                    self.config.max_packets_per_message,
                    0xEFFF_FFFF,
                    self.config.packet_alignment_factor,
                    0,
                    0,
                ]);
                self.to_guest.push_back(Outgoing::Control(reply));
            }
            // HALT: no reply (OpenVMM ignores it); recorded for the tests.
            3 => self.halted = true,
            4 | 5 if !self.rndis_initialized => {
                self.die(ch, "InvalidRndisState: QUERY/SET before INITIALIZE".into());
                return false;
            }
            4 => {
                let oid = u32_at(m, 12).unwrap_or(0);
                let mac = self.config.mac;
                let frame = self.ndis_config.map_or(1514, |c| c.0);
                let info: Result<Vec<u8>, u32> = match oid {
                    0x0001_0106 => Ok(words(&[frame - 14])),
                    0x0001_0107 => Ok(words(&[100_000_000])),
                    0x0001_010C => Ok(words(&[0x155D])),
                    0x0001_0114 => Ok(words(&[if self.link_up { 0 } else { 1 }])),
                    0x0101_0101 | 0x0101_0102 => Ok(mac.to_vec()),
                    0xFC01_020B | 0xFC01_020D => {
                        let len = u32_at(m, 16).unwrap_or(0) as usize;
                        let off = u32_at(m, 20).unwrap_or(0) as usize + 8;
                        let input = m.get(off..off + len).unwrap_or(&[]);
                        self.offload.query(oid, input, self.version.unwrap_or(0))
                    }
                    rss::OID_RSS_CAPABILITIES => self.rss_capabilities().ok_or(0xC000_00BB),
                    _ => Err(0xC000_00BB),
                };
                let (status, info) = match info {
                    Ok(i) => (0, i),
                    Err(status) => (status, Vec::new()),
                };
                let mut reply = words(&[
                    0x8000_0004,
                    24 + info.len() as u32,
                    request_id,
                    status,
                    info.len() as u32,
                    if info.is_empty() { 0 } else { 16 },
                ]);
                reply.extend_from_slice(&info);
                self.to_guest.push_back(Outgoing::Control(reply));
            }
            5 => {
                let oid = u32_at(m, 12).unwrap_or(0);
                let len = u32_at(m, 16).unwrap_or(0) as usize;
                let off = u32_at(m, 20).unwrap_or(0) as usize + 8;
                let info = m.get(off..off + len);
                let value = info.and_then(|v| u32_at(v, 0));
                let status = match (oid, value) {
                    (0xFC01_020C, _) => {
                        let nvsp = self.version.unwrap_or(0);
                        match self.offload.set_parameters(info.unwrap_or(&[]), nvsp) {
                            Ok(current) => {
                                // OpenVMM follows every set with the new configuration.
                                let ind = indicate_status(0x4002_0006, &current);
                                self.to_guest.push_back(Outgoing::Control(ind));
                                0
                            }
                            Err((status, why)) => {
                                if let Some(why) = why {
                                    self.reject(ch, why);
                                }
                                status
                            }
                        }
                    }
                    (rss::OID_RSS_PARAMETERS, _) => {
                        let info = m.get(off..off + len).unwrap_or(&[]).to_vec();
                        self.set_rss_parameters(ch, &info)
                    }
                    (0x0001_010E, Some(f)) => {
                        self.filter = f;
                        if let Some((sw, port)) = &self.switch {
                            sw.set_filter(*port, f);
                        }
                        0
                    }
                    _ => 0xC000_00BB,
                };
                let reply = words(&[0x8000_0005, 16, request_id, status]);
                self.to_guest.push_back(Outgoing::Control(reply));
            }
            8 => {
                let reply = words(&[0x8000_0008, 16, request_id, 0]);
                self.to_guest.push_back(Outgoing::Control(reply));
            }
            other => {
                self.die(ch, format!("RndisMessageTypeNotImplemented: {other:#x}"));
                return false;
            }
        }
        true
    }
}
