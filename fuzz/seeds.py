#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<target>/seed-* : a few hand-made inputs per target,
encoded with the same primitives the targets read (Input in src/lib.rs: little-endian ints,
bool = low bit of a byte, bytes(max) = a length byte then the bytes, ring_index = a mode byte
then a u32). Run from fuzz/: python3 seeds.py"""
import os, struct

def u8(v): return bytes([v & 0xFF])
def u16(v): return struct.pack('<H', v & 0xFFFF)
def u32(v): return struct.pack('<I', v & 0xFFFFFFFF)
def u64(v): return struct.pack('<Q', v & (2**64 - 1))
def blob(b, max_len):  # Input::bytes(max): length via below(max + 1), then the bytes
    return (u8(len(b)) if max_len < 256 else u32(len(b))) + b
def idx(v): return u8(3) + u32(v)  # a valid ring index

seeds = {}

# ring_reader: size byte, double-mapped, r0, w0, mask, initial bytes, then ops.
def inband(payload, tid=1):  # op 0: host writes an in-band packet
    return u8(0) + u8(0) + blob(payload, 96) + u8(2) + u16(0) + u64(tid)
read = u8(4) + u8(2)          # op 4: read into the whole buffer
publish, drain_end, drain_begin = u8(7), u8(9), u8(8)
seeds['ring_reader'] = [
    u8(0) + u8(0) + idx(0) + idx(0) + u8(0) + u8(0) + inband(b'hello!!!') + read + publish,
    u8(0xF0) + u8(1) + idx(4080) + idx(4080) + u8(1) + u8(0) + drain_begin
        + inband(bytes(range(40)), 7) + inband(b'x' * 9, 8) + read + read + drain_end,
    # a host rewriting the write index during the read (hook: skip 0, WriteIndex 0)
    u8(2) + u8(0) + idx(0) + idx(0) + u8(0) + u8(0) + inband(b'abcdefgh' * 3)
        + u8(3) + u8(0) + u8(0) + idx(0) + read + read,
]

# ring_writer: size, double, r0, w0, pending size, mask, then ops.
def spec(kind, payload, extra=b''):  # op 3: write; kind 0 in-band, 1 completion, 2 GPA, 3 TP
    return u8(3) + u8(kind) + u8(1) + u8(2) + blob(payload, 63) + extra
commit, consume = u8(5), u8(1)
gpa = u8(1) + u8(1) + u16(10) + u16(100) + u8(2) + u64(0x1234)  # one range, 1 PFN
tp = u8(2) + u32(64) + u32(0) + u32(32) + u32(64)
tail = u64(9) + u8(1) + u16(3) + u8(0)
seeds['ring_writer'] = [
    u8(0) + u8(0) + idx(0) + idx(0) + u32(0) + u8(0) + spec(0, b'ping' * 4) + u64(1) + u8(1)
        + u16(0) + u8(0) + commit + consume + u8(6) + u8(1) + u16(200),
    u8(0xF0) + u8(1) + idx(4000) + idx(4000) + u32(0) + u8(1) + spec(2, b'req' * 5, gpa) + tail
        + commit + spec(3, b'rx' * 3) + u8(0) + tp + u64(5) + u8(1) + u16(1) + u8(1) + commit,
    u8(1) + u8(0) + idx(0) + idx(0) + u32(0) + u8(0) + spec(1, b'z' * 60) + u64(2) + u8(0)
        + u16(0) + u8(0) + spec(1, b'z' * 60) + u64(3) + u8(0) + u16(0) + u8(0) + u8(7),
]

# vmbus_messages: raw host messages.
def m(ty, body): return u32(ty) + u32(0) + body
offer = bytearray(m(1, bytes(188)))
offer[184:188] = u32(5); offer[192:196] = u32(0x10005); offer[188] = 3; offer[189] = 1
seeds['vmbus_messages'] = [
    bytes(offer),
    m(15, u8(1) + u8(0) + u16(0) + u32(0x1234) + u32(0x1F)),
    m(10, u32(5) + u32(0xE1E10) + u32(0)),
    m(6, u32(5) + u32(1) + u32(0)),
    m(2, u32(5)),
    m(12, u32(0xE1E10)),
    m(24, u32(5) + u32(0)),
    u32(15) + u8(1),
]

# vmbus_bus: an empty tape (a correct host), no take/alloc/signal failures, VP 0, versions
# from index k.
def bus(k, ops): return blob(b'', 128) + u8(1) + u8(1) + u8(1) + u8(0) + u8(k) + u32(0) + u8(0) + ops
connect = u8(17) + u8(5)
open_ch = u8(12) + u8(0) + u8(0) + u8(0) + u8(5)
# (with one channel open, picking it reads no byte)
request = u8(16) + u8(0) + blob(b'request', 64)
recv = u8(16) + u8(1)
close = u8(13) + u8(5)
seeds['vmbus_bus'] = [
    bus(2, connect + open_ch + request + u8(3) + u8(1) + recv + close + u8(18) + u8(5)),
    bus(9, connect + u8(14) + u8(0) + u8(40) + u8(5) + u8(15) + u8(0) + u8(5) + u8(4) + connect),
    bus(0, u8(0) + u8(1) + u8(1) + u8(11) + open_ch + u8(5) + u8(1) + close),
    blob(bytes([3, 1, 2, 0, 0xF1, 0, 2]), 128) + u8(1) + u8(1) + u8(1) + u8(0) + u8(4) + u32(0) + u8(0)
        + connect + open_ch + u8(3) + u8(1),
]

# channel_recv: offer monitor id/allocated, teardown answered, failing signals, versions, features, ring
# pages; then ops: request, host reads, host completes (a real id), guest receives.
def chan(ops, version=1, fail_signals=None):
    sig = u8(0) + u64(fail_signals) if fail_signals is not None else u8(1)
    # a monitored offer signals by a monitor bit; with failing signals use HvSignalEvent
    allocated = u8(0) if fail_signals is not None else u8(1)
    return u8(3) + allocated + u8(1) + sig + u8(version) + u8(0) + u8(0) + u8(0) + ops
req = u8(0) + blob(b'get', 96)
host_read = u8(7)
complete_real = u8(9) + u8(3) + u8(0) + blob(b'done', 64)
complete_forged = u8(9) + u8(0) + u64(0x500000001) + blob(b'?', 64)
recv_all = u8(3) + u8(1)
seeds['channel_recv'] = [
    chan(req + req + host_read + complete_real + complete_real + recv_all + u8(6) + u8(1)),
    chan(req + host_read + complete_forged + u8(12) + u8(0) + blob(b'data', 128) + u64(3)
         + u8(1) + recv_all + u8(15) + u8(0) + recv_all, 8),
    chan(req + host_read + complete_real + recv_all, 2, fail_signals=0b1),
    chan(req + u8(14) + u8(1) + u8(0) + idx(4) + recv_all + u8(13) + u32(0) + blob(b'\xff' * 16, 48)
         + recv_all + u8(16) + u8(1) + recv_all),
]

# winhv_synic: 7 CPUID leaves (16 bytes + a steer byte), 8 register values, AutoEOI, ops.
def leaves(steer): return b''.join(bytes(16) + u8(steer) for _ in range(7))
regs = bytes(64)
def slot(sint, ty, size, flags, payload):
    words = struct.pack('<IBBH', ty, size, flags, 0) + u64(0) + payload.ljust(240, b'\0')
    return u8(0) + u8(sint) + words + u8(2)
take = u8(3) + u8(1) + u8(2)
seeds['winhv_synic'] = [
    leaves(1) + regs + u8(0) + slot(2, 1, 24, 1, b'vmbus message payload...') + take + take,
    leaves(1) + regs + u8(1) + u8(2) + u8(2) + bytes(256) + slot(2, 0x80000010, 32, 0, b't') + take
        + u8(5) + u8(2) + u8(1) + u8(0) + u64(0b1011) + u8(6) + u8(2) + u8(1) + u16(64),
    leaves(0) + regs + u8(0) + u8(8) + u8(1) + u32(3) + u64(1 << 63) + u64(5) + u8(2) + u32(3)
        + u32(3) + bytes(160) + u8(9) + u8(2) + u8(1) + u8(0) + u8(0) + u8(2) + u8(1) + u8(6) + u64(0),
]

# Driver targets: the first byte picks the part; device parts start with the host set-up
# (teardowns answered, VMBus version index), then each guest message the host reads takes a
# decision byte (0 = the correct answer) and each message it sends a transaction id.
tid = u64(7)

# synthhid: mode 0 parsers, 1 mouse, 3 keyboard.
hv_mouse = bytes([0x05, 0x01, 0x09, 0x02, 0xA1, 0x01, 0x09, 0x01, 0xA1, 0x00, 0x05, 0x09, 0x19,
    0x01, 0x25, 0x05, 0x15, 0x00, 0x25, 0x01, 0x95, 0x05, 0x75, 0x01, 0x81, 0x02, 0x95, 0x01,
    0x75, 0x03, 0x81, 0x01, 0x05, 0x01, 0x09, 0x30, 0x09, 0x31, 0x15, 0x00, 0x26, 0xFF, 0x7F,
    0x75, 0x10, 0x95, 0x02, 0x81, 0x02, 0x09, 0x38, 0x16, 0x01, 0x80, 0x26, 0xFF, 0x7F, 0x75,
    0x10, 0x95, 0x01, 0x81, 0x06, 0xC0, 0xC0])
def mouse_msg(kind, payload):
    return u32(1) + u32(8 + len(payload)) + u32(kind) + u32(len(payload)) + payload
info = u32(32) + u16(0x045E) + u16(0x0621) + u16(1) + bytes(22) \
    + bytes([9, 0x21, 1, 1, 0, 1, 0x22]) + u16(len(hv_mouse)) + hv_mouse
report = lambda x, y, b, w: u8(2) + u16(x) + u16(y) + u8(b) + u16(w) + tid
seeds['synthhid'] = [
    u8(0) + blob(mouse_msg(2, info), 400) + u32(100) + u32(200) + blob(b'abc', 80)
        + blob(mouse_msg(4, bytes(7)), 400) + blob(u32(3) + u16(0x1E) + u16(0) + u32(2), 400),
    u8(1) + u8(1) + u8(0) + u8(0) + tid + tid + u8(0) + report(100, 200, 1, 0)
        + report(32767, 0, 3, 0xFFFF) + u8(7) + u8(5) + u16(800) + u16(600) + report(5, 5, 0, 1)
        + u8(7) + u8(3) + u8(4) + blob(bytes(7), 120) + u8(0) + tid + u8(7),
    u8(1) + u8(1) + u8(2) + u8(3) + blob(hv_mouse, 200) + tid + tid + u8(0) + report(1, 2, 0, 0)
        + u8(7),
    u8(3) + u8(1) + u8(0) + u8(0) + tid + u8(0) + u16(0x1E) + u8(0) + tid + u8(0) + u16(0x1E)
        + u8(2) + tid + u8(5) + u16(4) + u8(7) + u8(4) + u8(9),
]

# ic_services: mode 0 the services without a channel (service byte: 0 heartbeat,
# 1 shutdown, 2 time sync, 3 KVP), else a channel of the service picked by the next byte.
def negotiate_req(fw_idx, svc_idx):
    # negotiate(): 1 framework and 1 service version picked from ours, honest counts; then
    # the header version (ours) and status.
    return u8(1) + u8(1) + u8(fw_idx) + u8(1) + u8(1) + u8(svc_idx) + u8(1)
seeds['ic_services'] = [
    u8(0) + u8(0) + u8(0) + negotiate_req(0, 0) + u8(1) + u8(0) + u32(0) + u8(1)
        + u8(1) + blob(u64(41), 44) + u8(1) + u8(0) + u8(1),
    u8(0) + u8(3) + u8(1) + u8(1) + u8(1) + u8(0) + u8(0) + u8(3) + u8(4) + bytes(400) + u8(1)
        + u8(1) + u8(0) + u8(1) + u8(1) + u8(1) + u8(0) + u8(0) + u8(0) + u8(1) + u8(1) + u8(0)
        + u8(1),
    u8(1) + u8(0) + u8(1) + u8(0) + u8(0) + u8(0) + negotiate_req(0, 0) + u8(0) + u8(0) + u8(1)
        + u8(8) + u8(6) + u8(0) + u8(3) + blob(u64(5), 60) + u8(0) + u8(2) + u8(0) + u8(1)
        + u8(8) + u8(6),
    u8(1) + u8(1) + u8(1) + u8(0) + u8(0) + u8(3) + blob(bytes([1, 0, 0, 0]), 60) + u8(1)
        + u8(2) + u8(0) + u8(1) + u8(7) + u8(3) + u8(8) + u8(6) + u8(9),
]

# storvsc: 0 parsers, 1 handshake, 2 ScsiDisk over a transport, 3 request table,
# 4 the controller (host set-up bytes, then the handshake's decisions, then operations).
ctl_setup = bytes([4, 1, 0, 1, 32, 1, 0, 0, 2, 1, 3, 2, 0, 3])
seeds['storvsc'] = [
    u8(0) + blob(bytes([0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2A, 0x09]), 120) + bytes(40),
    u8(1) + u8(1) + u8(0) + bytes(40),
    u8(2) + u8(1) + u8(63) + u8(1) + u8(0) + u8(0) + u8(4) + u8(0) + bytes(12)
        + u8(0) + u8(3) + u8(2) + bytes(8) + u8(2) + u8(5) + u8(1) + bytes(8) + u8(4),
    u8(3) + bytes([0, 1, 0, 0, 1, 1, 2, 2, 0, 3, 4, 4, 4, 5, 0]),
    ctl_setup + bytes(5) + bytes([0, 0, 1, 5, 1, 0, 0, 0, 7, 0, 1, 1, 1, 9, 3, 7, 0, 0, 0, 4, 15])
        + bytes([10]) + bytes(16) + bytes([0, 3, 2, 1, 4, 1]),
    ctl_setup + bytes(5) + bytes([0, 0, 1, 5, 1, 7, 0xB0, 8, 0, 0, 4, 15, 9, 0, 9, 4, 15]),
]

# netvsc: 0 parsers, else an open NIC (configuration and host bytes, the handshake's
# decisions, then operations).
def eth(n): return bytes([0, 0x15, 0x5D, 1, 2, 3, 0, 0x15, 0x5D, 9, 9, 9, 0x08, 0]) + bytes(n - 14)
# part, teardown answered, bus version, NVSP versions, MTU, receive and send buffer pages,
# packet filter, ring pages, offloads (0: on), host: NVSP max, section, slot, packing,
# max frame; offload caps (0: none), RSS (0: none), sub-channel grant, queues, key.
def nic_config(caps=b'\0', rss=b'\0', grant=0, queues=0, send=4):
    return bytes([1, 1, 0, 0, 0, 12, send]) + u32(0xD) + bytes([6, 6, 0, 0, 0, 0, 8, 3, 0]) \
        + caps + rss + bytes([grant, queues, 0])
nic_setup = nic_config()
frame2 = u8(2) + u8(50) + eth(64)
seeds['netvsc'] = [
    u8(0) + blob(u32(1) + u32(60) + u32(36) + u32(16) + bytes(20) + u32(0) + bytes(16), 300)
        + blob(eth(20), 200) + u8(100) + blob(b'', 40) + u32(1) + u32(0x10114),
    nic_setup + bytes(12) + u8(0) + u8(1) + frame2 + frame2 + u8(1) + u8(0) + u8(3) + u8(20)
        + u8(6) + frame2 + u8(9) + u8(0) + u8(13) + u8(0) + u8(3) + u8(20),
    nic_setup + bytes(12) + u8(7) + u8(2) + frame2 + frame2 + frame2 + u8(9) + bytes(4)
        + u8(2) + u8(2) + u8(0) + u8(4) + u8(11) + u8(1) + u8(1) + u32(5) + u8(3) + u8(20),
]

# synthvid: 0 parsers and damage, else the device (host versions, resolutions, the
# driver's configuration, the handshake's decisions, then operations).
vid_setup = bytes([1, 1, 0, 1, 1, 1, 1]) + u16(32) + u16(24) + bytes([0, 0, 0, 1, 0, 1]) \
    + u32(0x123456) + bytes([0]) + tid + bytes([0]) + tid + bytes([0]) + tid + bytes([0])
seeds['synthvid'] = [
    u8(0) + blob(u32(1) + u32(14) + u32(2) + u32(14) + u32(0x30005) + u8(1) + u8(1), 1200)
        + bytes([20, 20, 1, 2, 3, 4, 1, 5, 5, 5, 5, 1, 30, 2, 9, 9]),
    vid_setup + bytes([0, 3, 4, 10, 10]) + u32(0xFF00FF) + bytes([4, 0]) + bytes([6, 0, 1, 1, 0, 0])
        + bytes([5]) + bytes([1, 0, 0, 40, 40]) + u32(0x00FF00) + bytes([4, 0, 9]),
    vid_setup + bytes([7, 0, 1]) + bytes([8]) + u32(3) + u32(4) + u8(1) + bytes([9, 2, 2, 0, 0, 0])
        + bytes([3, 5]) + u32(7) + bytes([4, 0]),
]

# netvsc_offload: the part, then its input (frames from src/net.rs's generator: mode, shape,
# MACs, TCP data offset, IHL, payload length, then the header fields that may be odd).
def frame(v6=False, proto_idx=0, payload=b'', big=False):
    shape = 0x10 | (proto_idx << 1) | int(v6)
    f = u8(3) + u8(shape) + bytes(range(12)) + u8(2) + u8(2)
    f += (u8(0) + u32(len(payload))) if big else (u8(3) + u8(len(payload)))
    if v6:
        f += u8(1) + bytes(3) + u8(1) + bytes(range(32, 64))
    else:
        f += u8(1) + u8(1) + u16(0x1234) + u8(2) + bytes(2) + bytes([10, 0, 0, 1, 10, 0, 0, 2])
    if proto_idx == 0:  # TCP
        f += u16(0x3039) + u16(80) + u32(1) + u32(0) + bytes([0x18, 0, 0xFF]) + bytes(4)
    else:  # UDP
        f += u16(53) + u16(53) + u8(1) + bytes(2)
    return f + payload + u8(1)
ms_key = bytes([0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43,
    0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
    0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa])
caps = u8(1) + u8(2) + u8(1) + u8(1) + u8(3) + u8(2) \
    + b''.join(u8(1) + u16(v) for v in (0x155, 0x155, 0x55, 0x55)) \
    + bytes([0, 0, 2, 0, 0, 2, 5]) + u8(1) + u8(1)
lso_limits = u8(1) + u8(0) + u8(3)
rss = bytes([0x88, 2, 18, 0, 1, 0x3F, 0, 0]) + u32(8) + u32(8) + u16(128)
seeds['netvsc_offload'] = [
    u8(0) + caps + u8(0),
    u8(0) + caps + u8(4),
    u8(1) + frame(False, 0, b'hello tcp!') + u8(0x1F) + u8(0),
    u8(1) + frame(True, 3, b'hello udp6') + u8(0x0F) + u8(1),
    u8(2) + frame(False, 0, bytes(range(256)) * 12, True) + lso_limits + lso_limits + u8(3)
        + u8(0) + u8(54),
    u8(2) + frame(True, 0, bytes(4000), True) + lso_limits + lso_limits + u8(4) + u8(200)
        + u8(0) + u8(60),
    u8(3) + u8(1) + u8(0) + u8(1) + u8(0) + u8(1) + u32(0x18) + u32(0x21) + u8(0x1F)
        + frame(False, 0, b'x'),
    u8(4) + u8(1) + u8(1) + rss + u8(1) + u8(1) + u8(2) + u8(0) + u8(3) + u8(3) + u8(3)
        + ms_key + u8(0) + u16(0) + u32(0x1701),
    u8(5) + u8(0) + u8(1) + u8(0) + u32(134) + u32(16) + u32(12)
        + b''.join(u32(i % 4) for i in range(16)) + bytes(104 - 76) + u8(0) + u8(1) + u8(1) + u8(1)
        + b''.join(u8(1) + u8(i % 4) for i in range(16)) + u8(4) + u32(1) + u32(7) + u32(99)
        + u32(0xFFFFFFFF) + u8(1),
    u8(6) + ms_key + u8(12) + bytes([66, 9, 149, 187, 161, 142, 100, 80, 4, 22, 10, 2])
        + u8(1) + frame(False, 0, b'') + u8(7),
]

# netvsc with offloads (OpenVMM's capabilities): a checksum-offloaded send, an LSO send, frames
# with checksum verdicts polled with them; and with four queues: steered sends, frames on a
# sub-channel, a send table, the queues closed and opened again.
off_setup = nic_config(caps=u8(2) + u8(1)) + bytes(13)
steps = bytes([9] * 6)  # decisions for the host's reads (9: correct), then steps
seeds['netvsc'] += [
    off_setup + u8(14) + frame(False, 0, b'checksum me', True)[:-1] + u8(1) + u8(0) + steps
        + u8(15) + frame(False, 0, bytes(range(256)) * 12, True)[:-1] + u8(1) + u8(0) + steps
        + u8(0) + u8(0) + frame2 + u8(1) + u8(3) + u8(17) + u8(20) + u8(0),
    nic_config(rss=u8(1) + u8(3), grant=3, queues=3, send=15) + bytes(15)
        + b''.join(u8(16) + frame(False, 0, bytes([i]) * 20) for i in range(6)) + steps
        + u8(0) + u8(0) + frame2 + u8(0) + u8(2) + u8(17) + u8(20) + u8(1)
        + u8(18) + bytes(16) + u8(4) + u8(3) + u8(20) + u8(19) + steps + u8(19) + steps
        + u8(16) + frame(True, 0, b'v6'),
]

# netvsc_offload part 7: a packet-id PPI, then a frame in three fragments (first, middle,
# last) and an ordinary frame.
def frag(flags_idx, data, cs=None, last_range=False):
    return u8(flags_idx) + u8(1) + u8(1) + u32(len(data)) + data \
        + (u8(1) + u32(cs) if cs is not None else u8(0)) + u8(0 if last_range else 1)
seeds['netvsc_offload'] += [
    u8(7) + u8(1) + u8(0) + u8(0) + u8(0) + u8(1) + bytes([1, 3, 7, 0]) + u8(0) + u8(0)
        + frag(0, b'first part ', 0x18) + frag(1, b'middle part ') + frag(3, b'last', None, True)
        + u8(5) + u8(1) + u8(1) + u32(3) + b'abc' + u8(0) + u8(1),
]

for target, inputs in seeds.items():
    d = os.path.join('corpus', target)
    os.makedirs(d, exist_ok=True)
    for i, b in enumerate(inputs):
        with open(os.path.join(d, f'seed-{i}'), 'wb') as f:
            f.write(b)
    print(f'{target}: {len(inputs)} seeds')
