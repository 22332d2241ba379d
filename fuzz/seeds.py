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

for target, inputs in seeds.items():
    d = os.path.join('corpus', target)
    os.makedirs(d, exist_ok=True)
    for i, b in enumerate(inputs):
        with open(os.path.join(d, f'seed-{i}'), 'wb') as f:
            f.write(b)
    print(f'{target}: {len(inputs)} seeds')
